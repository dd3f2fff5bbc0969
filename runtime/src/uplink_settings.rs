//! Checking a change of the uplink's network settings (addressing, DNS, proxy) before it
//! is applied: the change is put into a copy of rapd's configuration and the whole copy
//! goes through [`Config::parse`] — exactly the validation rapd applies at start, with
//! the same messages naming the key. `rapctl network check` and the configuration
//! pages both ask rapd for it over the control socket (`check_uplink`); nothing is
//! written. Applying a checked change is the live configuration apply's job.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// The settings a technician may change; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkSettings {
    /// `dhcp` or `static`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addressing: Option<String>,
    /// With `static`: `a.b.c.d/prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// With `static`: the gateway; empty removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// DNS servers; an empty list uses DHCP's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<String>>,
    /// `http://[user:pass@]host:port` (CONNECT) or `socks5://…`; empty means direct.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
}

/// Why a change cannot even be put into the configuration.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{path}: {message}")]
    Current { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// The configuration text with `s` applied (comments are not kept: the text is only
/// validated, never written).
pub fn candidate(current: &str, s: &UplinkSettings) -> Result<String, String> {
    let mut doc: toml::Table = toml::from_str(current).map_err(|e| format!("the current configuration: {e}"))?;
    if let Some(p) = &s.proxy {
        let up = doc
            .entry("uplink")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or("the current configuration: [uplink] is not a table")?;
        if p.trim().is_empty() {
            up.remove("proxy");
        } else {
            up.insert("proxy".into(), toml::Value::String(p.trim().into()));
        }
    }
    let touches_network = s.addressing.is_some() || s.address.is_some() || s.gateway.is_some() || s.dns.is_some();
    if touches_network {
        let net = doc
            .entry("network")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or("the current configuration: [network] is not a table")?;
        let Some(up) = net.get_mut("uplink").and_then(toml::Value::as_table_mut) else {
            return Err("the uplink interface is not configured ([network.uplink] interface): rapd does not manage \
                        the uplink's addressing on this box"
                .into());
        };
        let mut set = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                if v.trim().is_empty() {
                    up.remove(k);
                } else {
                    up.insert(k.into(), toml::Value::String(v.trim().into()));
                }
            }
        };
        set("addressing", &s.addressing);
        set("address", &s.address);
        set("gateway", &s.gateway);
        if s.addressing.as_deref().map(str::trim) == Some("dhcp") {
            up.remove("address");
            up.remove("gateway");
        }
        if let Some(d) = &s.dns {
            let list: Vec<toml::Value> =
                d.iter().map(|x| x.trim()).filter(|x| !x.is_empty()).map(|x| toml::Value::String(x.into())).collect();
            up.insert("dns".into(), toml::Value::Array(list));
        }
    }
    toml::to_string(&doc).map_err(|e| format!("cannot render the changed configuration: {e}"))
}

/// Checks `s` against the configuration file at `path`; the checked configuration.
pub fn check(path: &Path, s: &UplinkSettings) -> Result<Config, SettingsError> {
    let current = std::fs::read_to_string(path)
        .map_err(|e| SettingsError::Current { path: path.display().to_string(), message: e.to_string() })?;
    let text = candidate(&current, s).map_err(SettingsError::Invalid)?;
    Config::parse(path, &text).map_err(|e| SettingsError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CURRENT: &str = "# comment\n[queue]\npath = \"/data/rapd/queue.db\"\n[uplink]\nurl = \"https://dc.example.net/api/v1/batches\"\nca = \"/c/ca\"\ncert = \"/c/box\"\nkey = \"/c/key\"\n[network.uplink]\ninterface = \"eth0\"\naddressing = \"dhcp\"\n";

    fn check_text(s: &UplinkSettings) -> Result<Config, String> {
        let t = candidate(CURRENT, s)?;
        Config::parse(Path::new("/etc/rapbox/rapd.toml"), &t).map_err(|e| e.to_string())
    }

    #[test]
    fn a_good_change_validates_and_a_bad_one_names_its_key() {
        let good = UplinkSettings {
            addressing: Some("static".into()),
            address: Some("192.0.2.10/24".into()),
            gateway: Some("192.0.2.1".into()),
            dns: Some(vec!["192.0.2.53".into()]),
            proxy: Some("http://192.0.2.8:3128".into()),
        };
        let c = check_text(&good).unwrap();
        assert!(c.uplink.proxy.is_some());
        let bad_gw = UplinkSettings { gateway: Some("198.51.100.1".into()), ..good.clone() };
        let e = check_text(&bad_gw).unwrap_err();
        assert!(
            e.contains("key `network.uplink.gateway`: 198.51.100.1 is not another host of the uplink subnet"),
            "{e}"
        );
        let bad_proxy = UplinkSettings { proxy: Some("ftp://192.0.2.8:21".into()), ..UplinkSettings::default() };
        let e = check_text(&bad_proxy).unwrap_err();
        assert!(e.contains("key `uplink.proxy`: scheme `ftp` is not supported"), "{e}");
        let no_addr = UplinkSettings { addressing: Some("static".into()), ..UplinkSettings::default() };
        let e = check_text(&no_addr).unwrap_err();
        assert!(e.contains("key `network.uplink.address`: is required"), "{e}");
        // Back to DHCP drops the static keys; an empty proxy means direct.
        let dhcp = UplinkSettings { addressing: Some("dhcp".into()), proxy: Some(String::new()), ..Default::default() };
        let c = check_text(&dhcp).unwrap();
        assert!(c.uplink.proxy.is_none());
    }
}
