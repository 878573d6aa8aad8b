//! Which IP addresses a guest may reach without an operator naming them.
//!
//! Everything that is not a public unicast address is refused: loopback,
//! private, link-local, CGNAT, unique-local, multicast, unspecified, reserved,
//! documentation ranges and cloud metadata endpoints. IPv6 forms that embed an
//! IPv4 address (mapped, NAT64, 6to4, compatible) are judged as that IPv4 address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Public,
    Loopback,
    Private,
    LinkLocal,
    CarrierNat,
    UniqueLocal,
    Multicast,
    Unspecified,
    Broadcast,
    Metadata,
    Reserved,
}

impl AddressClass {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressClass::Public => "public",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::LinkLocal => "link-local",
            AddressClass::CarrierNat => "carrier-grade NAT",
            AddressClass::UniqueLocal => "unique-local",
            AddressClass::Multicast => "multicast",
            AddressClass::Unspecified => "unspecified",
            AddressClass::Broadcast => "broadcast",
            AddressClass::Metadata => "cloud metadata",
            AddressClass::Reserved => "reserved",
        }
    }
}

/// Cloud metadata endpoints, named so denials say what was at stake.
const METADATA_V4: [Ipv4Addr; 5] = [
    Ipv4Addr::new(169, 254, 169, 254), // AWS, GCP, Azure IMDS, OpenStack, Oracle
    Ipv4Addr::new(169, 254, 170, 2),   // AWS ECS task metadata
    Ipv4Addr::new(100, 100, 100, 200), // Alibaba Cloud
    Ipv4Addr::new(168, 63, 129, 16),   // Azure WireServer (a public-looking address inside every VNet)
    Ipv4Addr::new(192, 0, 0, 192),     // Oracle Cloud metadata
];
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254); // AWS IMDS over IPv6

pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

pub fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let o = ip.octets();
    if METADATA_V4.contains(&ip) {
        return AddressClass::Metadata;
    }
    match o {
        [0, ..] if ip.is_unspecified() => AddressClass::Unspecified,
        [0, ..] => AddressClass::Reserved, // "this network"
        [127, ..] => AddressClass::Loopback,
        [10, ..] => AddressClass::Private,
        [172, b, ..] if (16..=31).contains(&b) => AddressClass::Private,
        [192, 168, ..] => AddressClass::Private,
        [169, 254, ..] => AddressClass::LinkLocal,
        [100, b, ..] if (64..=127).contains(&b) => AddressClass::CarrierNat,
        [192, 0, 0, _] => AddressClass::Reserved,                                        // IETF protocol assignments
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => AddressClass::Reserved, // documentation
        [198, b, ..] if b == 18 || b == 19 => AddressClass::Reserved,                    // benchmarking
        [255, 255, 255, 255] => AddressClass::Broadcast,
        [a, ..] if (224..=239).contains(&a) => AddressClass::Multicast,
        [a, ..] if a >= 240 => AddressClass::Reserved,
        _ => AddressClass::Public,
    }
}

// One branch per range, each with its reference, though several answer alike.
#[allow(clippy::if_same_then_else)]
pub fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    if ip == METADATA_V6 {
        return AddressClass::Metadata;
    }
    if let Some(v4) = embedded_ipv4(ip) {
        return match classify_v4(v4) {
            AddressClass::Public => AddressClass::Public,
            other => other,
        };
    }
    let s = ip.segments();
    if ip.is_unspecified() {
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if s[0] & 0xfe00 == 0xfc00 {
        AddressClass::UniqueLocal
    } else if s[0] & 0xffc0 == 0xfe80 || s[0] & 0xffc0 == 0xfec0 {
        AddressClass::LinkLocal // fe80::/10, and deprecated site-local fec0::/10
    } else if s[0] & 0xff00 == 0xff00 {
        AddressClass::Multicast
    } else if s[0] == 0x2001 && s[1] == 0x0db8 {
        AddressClass::Reserved // documentation
    } else if s[0] == 0x2001 && s[1] < 0x0200 {
        AddressClass::Reserved // IETF protocol assignments, Teredo included
    } else if s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0 {
        AddressClass::Reserved // discard-only
    } else if s[0] & 0xe000 != 0x2000 {
        AddressClass::Reserved // outside global unicast 2000::/3
    } else {
        AddressClass::Public
    }
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) or 6to4 (`2002::/16`) address.
fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_unspecified() && !ip.is_loopback() {
        return Some(tail); // IPv4-compatible (deprecated)
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return Some(tail);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_metadata_endpoints_are_named_whatever_range_they_sit_in() {
        for ip in ["168.63.129.16", "100.100.100.200", "192.0.0.192", "169.254.169.254", "::ffff:168.63.129.16"] {
            assert_eq!(classify(ip.parse().unwrap()), AddressClass::Metadata, "{ip}");
        }
    }

    fn class(s: &str) -> AddressClass {
        classify(s.parse().unwrap())
    }

    #[test]
    fn public_addresses_pass() {
        for a in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "93.184.216.34"] {
            assert_eq!(class(a), AddressClass::Public, "{a}");
        }
    }

    #[test]
    fn internal_ipv4_ranges_are_refused() {
        let cases = [
            ("127.0.0.1", AddressClass::Loopback),
            ("127.255.0.9", AddressClass::Loopback),
            ("10.1.2.3", AddressClass::Private),
            ("172.16.0.1", AddressClass::Private),
            ("172.31.255.255", AddressClass::Private),
            ("192.168.1.1", AddressClass::Private),
            ("169.254.1.1", AddressClass::LinkLocal),
            ("100.64.0.1", AddressClass::CarrierNat),
            ("0.0.0.0", AddressClass::Unspecified),
            ("0.1.2.3", AddressClass::Reserved),
            ("224.0.0.1", AddressClass::Multicast),
            ("255.255.255.255", AddressClass::Broadcast),
            ("240.0.0.1", AddressClass::Reserved),
            ("169.254.169.254", AddressClass::Metadata),
        ];
        for (a, c) in cases {
            assert_eq!(class(a), c, "{a}");
        }
        assert_eq!(class("172.32.0.1"), AddressClass::Public);
    }

    #[test]
    fn internal_ipv6_ranges_are_refused() {
        let cases = [
            ("::1", AddressClass::Loopback),
            ("::", AddressClass::Unspecified),
            ("fd00::1", AddressClass::UniqueLocal),
            ("fc00::1", AddressClass::UniqueLocal),
            ("fe80::1", AddressClass::LinkLocal),
            ("ff02::1", AddressClass::Multicast),
            ("fd00:ec2::254", AddressClass::Metadata),
            ("2001:db8::1", AddressClass::Reserved),
        ];
        for (a, c) in cases {
            assert_eq!(class(a), c, "{a}");
        }
    }

    #[test]
    fn mapped_ipv6_spellings_are_judged_as_the_ipv4_address() {
        assert_eq!(class("::ffff:127.0.0.1"), AddressClass::Loopback);
        assert_eq!(class("::ffff:7f00:1"), AddressClass::Loopback);
        assert_eq!(class("::ffff:169.254.169.254"), AddressClass::Metadata);
        assert_eq!(class("::127.0.0.1"), AddressClass::Loopback);
        assert_eq!(class("64:ff9b::a00:1"), AddressClass::Private);
        assert_eq!(class("2002:c0a8:0101::1"), AddressClass::Private);
        assert_eq!(class("::ffff:8.8.8.8"), AddressClass::Public);
    }
}
