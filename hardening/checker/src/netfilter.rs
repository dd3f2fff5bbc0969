//! The filter table as `iptables -S` (or `iptables-save`) prints it, and the two
//! questions the live controls ask of it: does anything accept a new connection that
//! arrives on the uplink (control 39: the box answers nothing there), and does the
//! firewall forward anything (control 35: `ip_forward=1` only where it must)?
//!
//! Pure functions over the text, so that the generated policies of rapd's golden files
//! can be checked here as well as the live rules of the booted box.

use std::collections::BTreeMap;

/// One `-A CHAIN ...` rule: the matches this module needs, and its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    /// `-i IFACE` (false) or `! -i IFACE` (true).
    pub input: Option<(bool, String)>,
    /// `--ctstate` of a conntrack match, e.g. `RELATED,ESTABLISHED`.
    pub ctstate: Option<String>,
    pub target: String,
    pub comment: Option<String>,
    /// The rule as printed.
    pub text: String,
}

/// The filter table: chain policies and rules, in order.
#[derive(Debug, Clone, Default)]
pub struct Table {
    pub policies: BTreeMap<String, String>,
    pub rules: Vec<Rule>,
}

/// Split like a shell does for the quoting iptables prints (double quotes, backslash).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                    any = true;
                }
            }
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

impl Table {
    /// Parse `iptables -S` output, or the `*filter` section of `iptables-save` /
    /// iptables-restore input (other tables are skipped).
    pub fn parse(text: &str) -> Table {
        let mut t = Table::default();
        let mut table = "filter".to_string();
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('*') {
                table = name.trim().to_string();
                continue;
            }
            if table != "filter" || line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix(':') {
                let w: Vec<&str> = rest.split_whitespace().collect();
                if w.len() >= 2 && w[1] != "-" {
                    t.policies.insert(w[0].to_string(), w[1].to_string());
                }
                continue;
            }
            let w = words(line);
            match w.first().map(String::as_str) {
                Some("-P") if w.len() >= 3 => {
                    t.policies.insert(w[1].clone(), w[2].clone());
                }
                Some("-A") if w.len() >= 2 => {
                    let mut rule = Rule {
                        chain: w[1].clone(),
                        input: None,
                        ctstate: None,
                        target: String::new(),
                        comment: None,
                        text: line.to_string(),
                    };
                    let mut i = 2;
                    while i < w.len() {
                        let negated = w[i] == "!";
                        let k = if negated { i + 1 } else { i };
                        let (Some(opt), val) = (w.get(k), w.get(k + 1).cloned()) else { break };
                        match (opt.as_str(), val) {
                            ("-i" | "--in-interface", Some(v)) => rule.input = Some((negated, v)),
                            ("--ctstate" | "--state", Some(v)) => rule.ctstate = Some(v),
                            ("-j" | "--jump" | "-g" | "--goto", Some(v)) => rule.target = v,
                            ("--comment", Some(v)) => rule.comment = Some(v),
                            _ => {
                                i = k + 1;
                                continue;
                            }
                        }
                        i = k + 2;
                    }
                    t.rules.push(rule);
                }
                _ => {}
            }
        }
        t
    }

    /// The policy of a built-in chain (`?` when the text does not give it).
    pub fn policy(&self, chain: &str) -> &str {
        self.policies.get(chain).map_or("?", String::as_str)
    }

    fn chain(&self, name: &str) -> impl Iterator<Item = &Rule> {
        let name = name.to_string();
        self.rules.iter().filter(move |r| r.chain == name)
    }

    fn is_chain(&self, name: &str) -> bool {
        self.rules.iter().any(|r| r.chain == name)
    }

    /// ACCEPT rules reachable from `start` that may take a packet opening a new
    /// connection (no conntrack match limiting them to RELATED/ESTABLISHED), for packets
    /// that arrive on `iface` (or on any interface when `iface` is None), with the rule
    /// text of each.
    fn accepting_new(&self, start: &str, iface: Option<&str>) -> Vec<&Rule> {
        let mut out = Vec::new();
        let mut todo = vec![start.to_string()];
        let mut seen = std::collections::BTreeSet::new();
        while let Some(chain) = todo.pop() {
            if !seen.insert(chain.clone()) {
                continue;
            }
            for r in self.chain(&chain) {
                let applies = match (&r.input, iface) {
                    (None, _) | (_, None) => true,
                    (Some((neg, name)), Some(i)) => wildcard_iface(name, i) != *neg,
                };
                if !applies {
                    continue;
                }
                if r.target == "ACCEPT" {
                    if !only_answers(r.ctstate.as_deref()) {
                        out.push(r);
                    }
                } else if self.is_chain(&r.target) && !only_answers(r.ctstate.as_deref()) {
                    todo.push(r.target.clone());
                }
            }
        }
        out
    }

    /// What the box would accept as a new connection arriving on `uplink` (control 39:
    /// must be nothing). Loopback rules do not match it; everything else is followed.
    pub fn uplink_accepts(&self, uplink: &str) -> Vec<String> {
        self.accepting_new("INPUT", Some(uplink)).into_iter().map(describe).collect()
    }

    /// The rules through which the firewall forwards new connections (control 35:
    /// `ip_forward=1` is needed only when there is one).
    pub fn forwards(&self) -> Vec<String> {
        self.accepting_new("FORWARD", None).into_iter().map(describe).collect()
    }
}

fn describe(r: &Rule) -> String {
    r.comment.clone().unwrap_or_else(|| r.text.clone())
}

/// Whether a conntrack state list admits only packets of connections already accepted.
fn only_answers(ctstate: Option<&str>) -> bool {
    ctstate.is_some_and(|s| s.split(',').all(|st| st == "RELATED" || st == "ESTABLISHED"))
}

/// iptables interface match: a trailing `+` matches any interface with that prefix.
fn wildcard_iface(pattern: &str, iface: &str) -> bool {
    match pattern.strip_suffix('+') {
        Some(prefix) => iface.starts_with(prefix),
        None => pattern == iface,
    }
}

/// The interface of the IPv4 default route in `/proc/net/route` text (the uplink side).
pub fn default_route_interface(route: &str) -> Option<String> {
    route.lines().skip(1).find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        (w.len() > 7 && w[1] == "00000000" && w[7] == "00000000").then(|| w[0].to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str) -> Table {
        let p =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../runtime/tests/fixtures/firewall").join(name);
        Table::parse(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
    }

    #[test]
    fn generated_policies_accept_nothing_new_from_the_uplink() {
        for (name, uplink) in [
            ("two-ports-lis.ipv4.rules", "eth0"),
            ("uplink-only.ipv4.rules", "eth0"),
            ("dhcp-proxy.ipv4.rules", "eth0"),
            ("two-ports-lis.ipv6.rules", "eth0"),
        ] {
            let t = golden(name);
            assert_eq!(t.policy("INPUT"), "DROP", "{name}");
            assert_eq!(t.policy("FORWARD"), "DROP", "{name}");
            assert_eq!(t.uplink_accepts(uplink), Vec::<String>::new(), "{name}");
        }
        // A configuration that names the uplink in `[pages] interfaces` opens it: found.
        assert_eq!(
            golden("pages.ipv4.rules").uplink_accepts("eth0"),
            vec!["uplink eth0: configuration pages https://192.0.2.10:443 (opened by [pages] interfaces)".to_string()]
        );
        // ... while the instrument ports do accept new connections (the agent port).
        let t = golden("two-ports-lis.ipv4.rules");
        assert!(!t.accepting_new("INPUT", Some("eth1")).is_empty());
    }

    #[test]
    fn forwarding_is_needed_only_by_an_opted_in_lis_forward() {
        assert_eq!(
            golden("two-ports-lis.ipv4.rules").forwards(),
            vec!["DXI-0001: LIS forward 10.10.1.1:5000 to 192.0.2.40:5001 (new connections rate-limited)".to_string()]
        );
        assert_eq!(golden("uplink-only.ipv4.rules").forwards(), Vec::<String>::new());
        assert_eq!(golden("pages.ipv4.rules").forwards(), Vec::<String>::new());
    }

    #[test]
    fn a_rule_that_opens_the_uplink_is_found_through_chains_and_negation() {
        let base = "-P INPUT DROP\n-P FORWARD DROP\n-P OUTPUT ACCEPT\n-N in-x\n\
                    -A INPUT -i lo -j ACCEPT\n\
                    -A INPUT -i eth0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n";
        let t = Table::parse(base);
        assert!(t.uplink_accepts("eth0").is_empty());
        for (extra, want) in [
            ("-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT", "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT"),
            ("-A INPUT ! -i eth1 -m comment --comment \"all but eth1\" -j ACCEPT", "all but eth1"),
            (
                "-A INPUT -i eth+ -j in-x\n-A in-x -m conntrack --ctstate NEW -j ACCEPT",
                "-A in-x -m conntrack --ctstate NEW -j ACCEPT",
            ),
        ] {
            let t = Table::parse(&format!("{base}{extra}\n"));
            assert_eq!(t.uplink_accepts("eth0"), vec![want.to_string()], "{extra}");
        }
        // Rules for other interfaces and answers-only rules do not open the uplink.
        let t = Table::parse(&format!(
            "{base}-A INPUT -i eth1 -j ACCEPT\n-A INPUT -m state --state ESTABLISHED -j ACCEPT\n"
        ));
        assert!(t.uplink_accepts("eth0").is_empty());
    }

    #[test]
    fn the_default_route_names_the_uplink() {
        let route = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     enp0s4\t00010A0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     enp0s3\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_interface(route).as_deref(), Some("enp0s3"));
        assert_eq!(default_route_interface("Iface\tDestination\n"), None);
    }
}
