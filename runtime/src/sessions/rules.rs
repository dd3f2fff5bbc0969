//! The firewall rules of one remote session: a pure function from the session's
//! instrument port and the configuration to an [`Overlay`] (inserted at the heads of the
//! policy's chains while the session lives, `crate::firewall::overlay`).
//!
//! What they open, and nothing else:
//!
//! - `nat PREROUTING`: TCP to the box's tunnel address, port P (instrument X's
//!   remote-desktop port) → DNAT to X:P; `nat POSTROUTING`: that connection leaves X's port
//!   under the box's address there (X needs no route to the tunnel);
//! - `filter FORWARD`: tunnel → X:P, and X:P's answers → tunnel (source checked);
//! - `filter INPUT`: the box's SSH port on the tunnel interface (and that connection's
//!   packets) — SSH is reachable on no other interface;
//! - `filter OUTPUT`: the OpenVPN client to the endpoint's port on the uplink (its address
//!   when the endpoint is an IPv4 literal); none with a proxy, which the policy already allows.

use std::net::Ipv4Addr;

use crate::config::PortConfig;
use crate::firewall::overlay::{Overlay, OverlayRule};
use crate::firewall::policy::Rule;

const ESTABLISHED: &str = "-m conntrack --ctstate RELATED,ESTABLISHED";
const NEW: &str = "-m conntrack --ctstate NEW";

/// What the rules are made from.
pub struct Plan<'a> {
    /// The session's id (in every rule's comment).
    pub session: &'a str,
    pub serial: &'a str,
    /// The tun device.
    pub tun: &'a str,
    /// The uplink interface.
    pub uplink: &'a str,
    /// The instrument's port; must have a remote-desktop port.
    pub port: &'a PortConfig,
    pub remote_desktop_port: u16,
    /// The endpoint's address when it is an IPv4 literal.
    pub endpoint_ip: Option<Ipv4Addr>,
    pub endpoint_port: u16,
    /// The OpenVPN client goes through the uplink's proxy (the policy already allows it).
    pub via_proxy: bool,
    pub ssh_port: u16,
}

/// The session's rules.
pub fn overlay(p: &Plan<'_>) -> Overlay {
    let mut rules = Vec::new();
    let s = p.session;
    let rdp = p.remote_desktop_port;
    let x = p.port.address;
    let mut add = |table: &'static str, chain: &str, r: Rule<'_>| {
        rules.push(OverlayRule { table, chain: chain.to_owned(), rule: r.render(chain) });
    };
    add(
        "filter",
        "INPUT",
        Rule {
            iif: Some(p.tun),
            matches: vec![ESTABLISHED.into()],
            comment: format!("session {s}: answers on the tunnel {}", p.tun),
            target: "ACCEPT".into(),
            ..Rule::default()
        },
    );
    add(
        "filter",
        "INPUT",
        Rule {
            iif: Some(p.tun),
            proto: Some("tcp"),
            dport: Some(p.ssh_port),
            matches: vec![NEW.into()],
            comment: format!("session {s}: SSH to the box over the tunnel only"),
            target: "ACCEPT".into(),
            ..Rule::default()
        },
    );
    add(
        "filter",
        "FORWARD",
        Rule {
            dst: Some(x),
            iif: Some(p.tun),
            oif: Some(&p.port.interface),
            proto: Some("tcp"),
            dport: Some(rdp),
            comment: format!("session {s}: tunnel to {} remote desktop {x}:{rdp}", p.serial),
            target: "ACCEPT".into(),
            ..Rule::default()
        },
    );
    add(
        "filter",
        "FORWARD",
        Rule {
            src: Some(x),
            iif: Some(&p.port.interface),
            oif: Some(p.tun),
            proto: Some("tcp"),
            sport: Some(rdp),
            matches: vec![ESTABLISHED.into()],
            comment: format!("session {s}: answers of {} remote desktop", p.serial),
            target: "ACCEPT".into(),
            ..Rule::default()
        },
    );
    if !p.via_proxy {
        add(
            "filter",
            "OUTPUT",
            Rule {
                dst: p.endpoint_ip,
                oif: Some(p.uplink),
                proto: Some("tcp"),
                dport: Some(p.endpoint_port),
                comment: format!("session {s}: OpenVPN to the endpoint"),
                target: "ACCEPT".into(),
                ..Rule::default()
            },
        );
    }
    add(
        "nat",
        "PREROUTING",
        Rule {
            iif: Some(p.tun),
            proto: Some("tcp"),
            dport: Some(rdp),
            comment: format!("session {s}: remote desktop of {}", p.serial),
            target: format!("DNAT --to-destination {x}:{rdp}"),
            ..Rule::default()
        },
    );
    add(
        "nat",
        "POSTROUTING",
        Rule {
            dst: Some(x),
            oif: Some(&p.port.interface),
            proto: Some("tcp"),
            dport: Some(rdp),
            comment: format!("session {s}: to {} under the box address of its port", p.serial),
            target: format!("SNAT --to-source {}", p.port.box_address.addr),
            ..Rule::default()
        },
    );
    Overlay { owner: format!("session {s}"), rules, forwarding: true }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Ipv4Cidr;

    fn port() -> PortConfig {
        PortConfig {
            interface: "eth1".into(),
            box_address: "10.10.1.1/24".parse::<Ipv4Cidr>().unwrap(),
            address: "10.10.1.2".parse().unwrap(),
            agent_port: 7300,
            remote_desktop_port: Some(5900),
            lis: None,
        }
    }

    #[test]
    fn the_rules_open_exactly_the_session() {
        let port = port();
        let plan = Plan {
            session: "s-1",
            serial: "DXI-0001",
            tun: "raptun0",
            uplink: "eth0",
            port: &port,
            remote_desktop_port: 5900,
            endpoint_ip: Some("192.0.2.99".parse().unwrap()),
            endpoint_port: 443,
            via_proxy: false,
            ssh_port: 22,
        };
        let o = overlay(&plan);
        let lines: Vec<String> = o.rules.iter().map(|r| format!("{} {}", r.table, r.rule)).collect();
        assert_eq!(
            lines,
            vec![
                "filter -A INPUT -i raptun0 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment \"session s-1: answers on the tunnel raptun0\" -j ACCEPT",
                "filter -A INPUT -i raptun0 -p tcp -m tcp --dport 22 -m conntrack --ctstate NEW -m comment --comment \"session s-1: SSH to the box over the tunnel only\" -j ACCEPT",
                "filter -A FORWARD -d 10.10.1.2/32 -i raptun0 -o eth1 -p tcp -m tcp --dport 5900 -m comment --comment \"session s-1: tunnel to DXI-0001 remote desktop 10.10.1.2:5900\" -j ACCEPT",
                "filter -A FORWARD -s 10.10.1.2/32 -i eth1 -o raptun0 -p tcp -m tcp --sport 5900 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment \"session s-1: answers of DXI-0001 remote desktop\" -j ACCEPT",
                "filter -A OUTPUT -d 192.0.2.99/32 -o eth0 -p tcp -m tcp --dport 443 -m comment --comment \"session s-1: OpenVPN to the endpoint\" -j ACCEPT",
                "nat -A PREROUTING -i raptun0 -p tcp -m tcp --dport 5900 -m comment --comment \"session s-1: remote desktop of DXI-0001\" -j DNAT --to-destination 10.10.1.2:5900",
                "nat -A POSTROUTING -d 10.10.1.2/32 -o eth1 -p tcp -m tcp --dport 5900 -m comment --comment \"session s-1: to DXI-0001 under the box address of its port\" -j SNAT --to-source 10.10.1.1",
            ]
        );
        assert!(o.forwarding);
        // Through a proxy the policy's own rule carries the tunnel; no OUTPUT rule is added.
        let o = overlay(&Plan { via_proxy: true, endpoint_ip: None, ..plan });
        assert!(o.rules.iter().all(|r| r.chain != "OUTPUT"));
        assert_eq!(o.rules.len(), 6);
    }
}
