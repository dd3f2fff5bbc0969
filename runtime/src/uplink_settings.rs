//! The uplink's network settings (addressing, DNS, proxy) as a technician changes them —
//! `rapctl network check|set` and the configuration pages' uplink form — turned into the
//! keys of rapd's one configuration apply (`config_apply`, [`crate::reconfig`]), which
//! validates the changed document exactly as a start does (the messages name the key) and
//! applies it only when valid. Nothing here validates or writes anything itself.

use serde::{Deserialize, Serialize};

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

/// The uplink settings of the configuration document `doc` as a technician sees them (the
/// document in force as `config_show` answers it: a proxy's credentials are hidden there).
/// Absent keys are empty; `addressing` is empty when rapd does not manage the uplink.
pub fn current(doc: &str) -> Result<UplinkSettings, String> {
    let doc: toml::Table = toml::from_str(doc).map_err(|e| format!("the configuration in force: {e}"))?;
    let s =
        |t: Option<&toml::Value>, k: &str| t.and_then(|t| t.get(k)).and_then(toml::Value::as_str).map(str::to_owned);
    let up = doc.get("network").and_then(|n| n.get("uplink"));
    let dns = up
        .and_then(|u| u.get("dns"))
        .and_then(toml::Value::as_array)
        .map(|a| a.iter().filter_map(toml::Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    Ok(UplinkSettings {
        addressing: Some(s(up, "addressing").unwrap_or_default()),
        address: Some(s(up, "address").unwrap_or_default()),
        gateway: Some(s(up, "gateway").unwrap_or_default()),
        dns: Some(dns),
        proxy: Some(s(doc.get("uplink"), "proxy").unwrap_or_default()),
    })
}

impl UplinkSettings {
    /// The settings of `self` (a whole form) that differ from `current`; the others `None`.
    pub fn changes_from(&self, current: &UplinkSettings) -> UplinkSettings {
        fn norm(v: &Option<String>) -> String {
            v.as_deref().unwrap_or("").trim().to_owned()
        }
        let pick = |new: &Option<String>, old: &Option<String>| (norm(new) != norm(old)).then(|| norm(new));
        let list = |v: &Option<Vec<String>>| -> Vec<String> {
            v.iter().flatten().map(|x| x.trim().to_owned()).filter(|x| !x.is_empty()).collect()
        };
        UplinkSettings {
            addressing: pick(&self.addressing, &current.addressing),
            address: pick(&self.address, &current.address),
            gateway: pick(&self.gateway, &current.gateway),
            dns: (list(&self.dns) != list(&current.dns)).then(|| list(&self.dns)),
            proxy: pick(&self.proxy, &current.proxy),
        }
    }

    /// The `config_apply` keys (docs/configuration.md) that make these settings of the
    /// configuration document in force `doc`: a setting given is set, an empty one
    /// removed (only when it is there: removing a missing key is refused), `dhcp` removes
    /// the static address and gateway, an empty DNS list removes `dns`. Whether the result
    /// is a valid configuration is rapd's validation to say.
    pub fn keys(&self, doc: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        use serde_json::Value;
        let doc: toml::Table = toml::from_str(doc).map_err(|e| format!("the configuration in force: {e}"))?;
        let up = doc.get("network").and_then(|n| n.get("uplink"));
        let has = |k: &str| up.and_then(|u| u.get(k)).is_some();
        let mut out = serde_json::Map::new();
        if let Some(p) = &self.proxy {
            if !p.trim().is_empty() {
                out.insert("uplink.proxy".into(), Value::String(p.trim().into()));
            } else if doc.get("uplink").and_then(|u| u.get("proxy")).is_some() {
                out.insert("uplink.proxy".into(), Value::Null);
            }
        }
        let network =
            self.addressing.is_some() || self.address.is_some() || self.gateway.is_some() || self.dns.is_some();
        if network && up.and_then(toml::Value::as_table).is_none() {
            return Err("the uplink interface is not configured ([network.uplink] interface): rapd does not manage \
                        the uplink's addressing on this box"
                .into());
        }
        let dhcp = self.addressing.as_deref().map(str::trim) == Some("dhcp");
        for (k, v) in [("addressing", &self.addressing), ("address", &self.address), ("gateway", &self.gateway)] {
            let key = format!("network.uplink.{k}");
            // With dhcp the static keys go, whatever was given for them.
            let dropped = dhcp && k != "addressing";
            match v.as_deref().map(str::trim) {
                Some(v) if !v.is_empty() && !dropped => {
                    out.insert(key, Value::String(v.into()));
                }
                Some(_) if has(k) => {
                    out.insert(key, Value::Null);
                }
                None if dropped && has(k) => {
                    out.insert(key, Value::Null);
                }
                _ => {}
            }
        }
        if let Some(d) = &self.dns {
            let list: Vec<Value> =
                d.iter().map(|x| x.trim()).filter(|x| !x.is_empty()).map(|x| Value::String(x.into())).collect();
            if !list.is_empty() {
                out.insert("network.uplink.dns".into(), Value::Array(list));
            } else if has("dns") {
                out.insert("network.uplink.dns".into(), Value::Null);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    const CURRENT: &str = "# comment\n[queue]\npath = \"/data/rapd/queue.db\"\n[uplink]\nurl = \"https://dc.example.net/api/v1/batches\"\nca = \"/c/ca\"\ncert = \"/c/box\"\nkey = \"/c/key\"\n[network.uplink]\ninterface = \"eth0\"\naddressing = \"dhcp\"\n";

    /// The settings as rapd's apply takes them: keys, applied to the document, then the
    /// validation of a start.
    fn check_text(s: &UplinkSettings) -> Result<Config, String> {
        let keys = s.keys(CURRENT)?;
        let changes = crate::reconfig::keys::from_json(&keys).map_err(|e| e.to_string())?;
        let t = crate::reconfig::keys::apply(CURRENT, &changes).map_err(|e| e.to_string())?;
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
        // Without a managed uplink only the proxy is a setting of the box.
        let unmanaged = CURRENT.replace("[network.uplink]\ninterface = \"eth0\"\naddressing = \"dhcp\"\n", "");
        let e = no_addr.keys(&unmanaged).unwrap_err();
        assert!(e.contains("rapd does not manage the uplink's addressing on this box"), "{e}");
        assert!(bad_proxy.keys(&unmanaged).is_ok());
    }

    #[test]
    fn a_form_becomes_the_keys_that_change() {
        let now = current(CURRENT).unwrap();
        assert_eq!(now.addressing.as_deref(), Some("dhcp"));
        assert_eq!(now.proxy.as_deref(), Some(""));
        // The whole form as the pages send it: only what differs becomes a key.
        let form = UplinkSettings {
            addressing: Some("dhcp".into()),
            address: Some(String::new()),
            gateway: Some(String::new()),
            dns: Some(vec![" 192.0.2.53".into()]),
            proxy: Some(String::new()),
        };
        let ch = form.changes_from(&now);
        assert_eq!(ch, UplinkSettings { dns: Some(vec!["192.0.2.53".into()]), ..Default::default() });
        let k = ch.keys(CURRENT).unwrap();
        assert_eq!(serde_json::Value::Object(k), serde_json::json!({ "network.uplink.dns": ["192.0.2.53"] }));
        // To static and back: dhcp removes address and gateway, an empty proxy removes it.
        let st = UplinkSettings {
            addressing: Some("static".into()),
            address: Some("192.0.2.10/24".into()),
            gateway: Some("192.0.2.1".into()),
            proxy: Some("http://192.0.2.8:3128".into()),
            ..Default::default()
        };
        let k = serde_json::Value::Object(st.keys(CURRENT).unwrap());
        assert_eq!(
            k,
            serde_json::json!({ "network.uplink.addressing": "static", "network.uplink.address": "192.0.2.10/24",
                                "network.uplink.gateway": "192.0.2.1", "uplink.proxy": "http://192.0.2.8:3128" })
        );
        let static_doc =
            format!("{CURRENT}address = \"192.0.2.10/24\"\ngateway = \"192.0.2.1\"\ndns = [\"192.0.2.53\"]\n")
                .replace("addressing = \"dhcp\"", "addressing = \"static\"")
                .replace("[uplink]\n", "[uplink]\nproxy = \"http://u:p@192.0.2.8:3128\"\n");
        let back = UplinkSettings {
            addressing: Some("dhcp".into()),
            dns: Some(vec![]),
            proxy: Some(String::new()),
            ..Default::default()
        };
        let k = serde_json::Value::Object(back.keys(&static_doc).unwrap());
        assert_eq!(
            k,
            serde_json::json!({ "network.uplink.addressing": "dhcp", "network.uplink.address": null,
                                "network.uplink.gateway": null, "network.uplink.dns": null, "uplink.proxy": null })
        );
        // Nothing to remove where nothing is.
        let k = UplinkSettings { proxy: Some(String::new()), gateway: Some(String::new()), ..Default::default() }
            .keys(CURRENT)
            .unwrap();
        assert!(k.is_empty(), "{k:?}");
    }
}
