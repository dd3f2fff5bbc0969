//! A small synchronous rtnetlink client: look links up, bring them up, list, add and
//! remove IPv4 addresses, set the default route, and receive link notifications.
//! Messages are encoded by `netlink-packet-route`; the socket is `netlink-sys`'s
//! blocking one. Every call acts in the network namespace the socket was opened in.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::config::Ipv4Cidr;

/// `RTMGRP_LINK`: the multicast group of link notifications.
const RTMGRP_LINK: u32 = 1;

/// What a link looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Carrier present (`IFF_LOWER_UP`).
    pub carrier: bool,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Link {
        let name = m
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })
            .unwrap_or_default();
        Link {
            index: m.header.index,
            name,
            up: m.header.flags.contains(LinkFlags::Up),
            carrier: m.header.flags.contains(LinkFlags::LowerUp),
        }
    }
}

/// A request/response rtnetlink socket.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
}

fn bad_data(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {what}"))
}

impl Rtnl {
    /// Opens a socket in the caller's network namespace.
    pub fn open() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl { socket, seq: 0 })
    }

    /// Sends one request and collects the answers until the ACK, the end of a dump or
    /// an error (returned as the errno it carries).
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut out = Vec::new();
        let mut rx = vec![0u8; 64 * 1024];
        loop {
            let n = self.socket.recv(&mut &mut rx[..], 0)?;
            let mut off = 0;
            while off < n.min(rx.len()) {
                let m: NetlinkMessage<RouteNetlinkMessage> =
                    NetlinkMessage::deserialize(&rx[off..n.min(rx.len())]).map_err(bad_data)?;
                let len = m.header.length as usize;
                if len == 0 {
                    return Err(bad_data("zero-length message"));
                }
                off += len;
                if m.header.sequence_number != self.seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(c) => Err(io::Error::from_raw_os_error(-c.get())),
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(im) => {
                        out.push(im);
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The link called `name`, or None when there is none.
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.request(RouteNetlinkMessage::GetLink(m), 0) {
            Ok(v) => Ok(v.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENODEV as i32) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets the link administratively up.
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(m), NLM_F_ACK).map(drop)
    }

    /// The IPv4 addresses on the link.
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<Ipv4Cidr>> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        let all = self.request(RouteNetlinkMessage::GetAddress(m), NLM_F_DUMP)?;
        Ok(all
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Local(IpAddr::V4(ip)) => {
                            Some(Ipv4Cidr { addr: *ip, prefix: a.header.prefix_len })
                        }
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    fn address_message(index: u32, a: Ipv4Cidr) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = a.prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(IpAddr::V4(a.addr)));
        m.attributes.push(AddressAttribute::Address(IpAddr::V4(a.addr)));
        m.attributes.push(AddressAttribute::Broadcast(a.broadcast()));
        m
    }

    /// Adds an IPv4 address (EEXIST when it is there already).
    pub fn add_address(&mut self, index: u32, a: Ipv4Cidr) -> io::Result<()> {
        let m = Self::address_message(index, a);
        self.request(RouteNetlinkMessage::NewAddress(m), NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL).map(drop)
    }

    /// Removes an IPv4 address.
    pub fn del_address(&mut self, index: u32, a: Ipv4Cidr) -> io::Result<()> {
        let m = Self::address_message(index, a);
        self.request(RouteNetlinkMessage::DelAddress(m), NLM_F_ACK).map(drop)
    }

    /// Sets (or replaces) the main table's default route via `gateway` on the link.
    pub fn set_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> io::Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = 0;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Static;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        m.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        m.attributes.push(RouteAttribute::Oif(index));
        self.request(RouteNetlinkMessage::NewRoute(m), NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE).map(drop)
    }

    /// Removes the main table's default route via `gateway` on the link (ESRCH when there is none).
    pub fn del_default_route(&mut self, index: u32, gateway: Ipv4Addr) -> io::Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = 0;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.scope = RouteScope::NoWhere;
        m.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        m.attributes.push(RouteAttribute::Oif(index));
        self.request(RouteNetlinkMessage::DelRoute(m), NLM_F_ACK).map(drop)
    }
}

/// A socket subscribed to link notifications (`RTM_NEWLINK`/`RTM_DELLINK`).
pub struct LinkMonitor {
    socket: Socket,
}

/// One link notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkChange {
    New(Link),
    Deleted(Link),
}

impl LinkMonitor {
    /// Subscribes in the caller's network namespace.
    pub fn open() -> io::Result<LinkMonitor> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
        Ok(LinkMonitor { socket })
    }

    /// Waits up to `timeout` for notifications; returns what arrived (maybe nothing).
    pub fn next(&mut self, timeout: Duration) -> io::Result<Vec<LinkChange>> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let ms = PollTimeout::try_from(timeout.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) => return Ok(Vec::new()),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
        let mut rx = vec![0u8; 64 * 1024];
        let n = match self.socket.recv(&mut &mut rx[..], 0) {
            Ok(n) => n.min(rx.len()),
            // The kernel dropped notifications: the caller re-reads the state.
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        let mut off = 0;
        while off < n {
            let m: NetlinkMessage<RouteNetlinkMessage> = NetlinkMessage::deserialize(&rx[off..n]).map_err(bad_data)?;
            let len = m.header.length as usize;
            if len == 0 {
                break;
            }
            off += len;
            match m.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                    out.push(LinkChange::New(Link::from_message(&l)))
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                    out.push(LinkChange::Deleted(Link::from_message(&l)))
                }
                _ => {}
            }
        }
        Ok(out)
    }
}
