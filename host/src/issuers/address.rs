//! Which addresses the host may fetch issuer certificates from: globally
//! routed unicast only. An IPv6 address that carries an IPv4 address the
//! network delivers to (mapped, compatible, NAT64, 6to4) is judged by that
//! IPv4 address, so `64:ff9b::127.0.0.1` is loopback, not "some IPv6 host".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether `ip` is a globally routed unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match classify(v6) {
            V6::Embeds(v4) => is_public_v4(v4),
            V6::Refused => false,
            V6::Native => is_public_v6(v6),
        },
    }
}

/// Whether the fetcher may connect to `ip`: a public address, or with
/// `allow_loopback` (tests only) a loopback one in any of its forms.
pub fn allowed(ip: IpAddr, allow_loopback: bool) -> bool {
    let loopback = match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || embedded_ipv4(v6).is_some_and(|v4| v4.is_loopback()),
    };
    is_public(ip) || (allow_loopback && loopback)
}

/// The IPv4 address an IPv6 address stands for, if it is one of the forms
/// that carries one: what `allow_loopback` and the public check look at.
pub fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    match classify(v6) {
        V6::Embeds(v4) => Some(v4),
        V6::Refused | V6::Native => None,
    }
}

/// How an IPv6 address is to be judged.
enum V6 {
    /// Traffic to it reaches this IPv4 address: judge that.
    Embeds(Ipv4Addr),
    /// A form whose destination cannot be told from the address alone.
    Refused,
    /// An IPv6 address in its own right.
    Native,
}

fn classify(v6: Ipv6Addr) -> V6 {
    let s = v6.segments();
    let last32 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) {
        // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated but
        // still routed by some stacks); `::` and `::1` land on 0.0.0.0 and
        // 0.0.0.1, which are not public either.
        return V6::Embeds(last32);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64 well-known prefix 64:ff9b::/96 (RFC 6052): the translator
        // connects to the last 32 bits.
        return V6::Embeds(last32);
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        // 64:ff9b:1::/48 (RFC 8215) is for local translators; where the IPv4
        // address sits depends on a prefix length only the local network
        // knows, and the block is not globally reachable in any case.
        return V6::Refused;
    }
    if s[0] == 0x2002 {
        // 6to4 (RFC 3056): the relay delivers to the IPv4 address in bits 16..48.
        return V6::Embeds(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    if s[0] == 0x2001 && s[1] == 0 {
        // Teredo (RFC 4380) is refused outright rather than judged by its two
        // IPv4 addresses (server in bits 32..64, client in the last 32 bits
        // XOR 0xffffffff): traffic goes through whichever relay the network
        // picks to a NAT mapping, so no check of ours covers where it ends
        // up, and no certificate authority publishes on a Teredo address.
        return V6::Refused;
    }
    V6::Native
}

fn is_public_v4(v4: Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    !(v4.is_unspecified()
        || v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_multicast()
        || v4.is_broadcast()
        || v4.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT, RFC 6598
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast, RFC 7526
        || (a == 198 && (b == 18 || b == 19)) // benchmarking, RFC 2544
        || a >= 240)
}

/// A native IPv6 address: only global unicast (2000::/3, RFC 4291) counts,
/// which leaves out loopback, unspecified, multicast, unique local
/// (`fc00::/7`), link-local (`fe80::/10`), site-local (`fec0::/10`), discard
/// (`100::/64`) and every other special block outside it; inside it, the
/// blocks IANA lists as not globally reachable are left out too.
fn is_public_v6(v6: Ipv6Addr) -> bool {
    let s = v6.segments();
    let special = match s[0] {
        // IETF protocol assignments 2001::/23; documentation 2001:db8::/32.
        0x2001 => s[1] < 0x0200 || s[1] == 0x0db8,
        // Documentation 3fff::/20, RFC 9637.
        0x3ff0..=0x3fff => true,
        _ => false,
    };
    (s[0] & 0xe000) == 0x2000 && !special
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(s: &str) -> bool {
        is_public(s.parse().unwrap())
    }

    #[test]
    fn ipv4_private_and_special_blocks_are_not_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "198.18.0.1",
        ] {
            assert!(!public(private), "{private}");
        }
        assert!(public("13.107.246.40"));
        assert!(public("8.8.8.8"));
    }

    #[test]
    fn native_ipv6_outside_global_unicast_is_not_public() {
        for private in [
            "::",
            "::1",
            "fd00::1",
            "fc00::1",
            "fe80::1",
            "fec0::1",     // site-local
            "feff::1",     // site-local's end
            "100::1",      // discard
            "100::ffff:1", // discard, still inside 100::/64
            "ff02::1",     // multicast
            "2001:db8::1", // documentation
            "3fff::1",     // documentation, RFC 9637
            "2001:2::1",   // benchmarking
            "2001:10::1",  // ORCHID
            "5f00::1",     // SRv6 SIDs
        ] {
            assert!(!public(private), "{private}");
        }
        for ok in ["2603:1030::1", "2606:4700::1111", "2a01:111::1"] {
            assert!(public(ok), "{ok}");
        }
    }

    #[test]
    fn ipv4_mapped_is_judged_by_its_ipv4() {
        assert!(!public("::ffff:127.0.0.1"));
        assert!(!public("::ffff:10.0.0.1"));
        assert!(!public("::ffff:169.254.169.254"));
        assert!(public("::ffff:13.107.246.40"));
    }

    #[test]
    fn ipv4_compatible_is_judged_by_its_ipv4() {
        assert!(!public("::10.0.0.1"));
        assert!(!public("::127.0.0.1"));
        assert!(!public("::192.168.0.1"));
        assert!(public("::13.107.246.40"));
        assert_eq!(
            embedded_ipv4("::10.0.0.1".parse().unwrap()),
            Some(Ipv4Addr::new(10, 0, 0, 1))
        );
    }

    #[test]
    fn nat64_well_known_prefix_is_judged_by_its_ipv4() {
        assert!(!public("64:ff9b::127.0.0.1"));
        assert!(!public("64:ff9b::10.0.0.1"));
        assert!(!public("64:ff9b::a9fe:a9fe")); // 169.254.169.254
        assert!(public("64:ff9b::13.107.246.40"));
        assert_eq!(
            embedded_ipv4("64:ff9b::7f00:1".parse().unwrap()),
            Some(Ipv4Addr::LOCALHOST)
        );
    }

    #[test]
    fn nat64_local_use_prefix_is_refused() {
        // Whatever IPv4 address it might carry, public or not.
        assert!(!public("64:ff9b:1::13.107.246.40"));
        assert!(!public("64:ff9b:1:d6b:f628::"));
        assert!(!public("64:ff9b:1::7f00:1"));
        assert_eq!(embedded_ipv4("64:ff9b:1::7f00:1".parse().unwrap()), None);
    }

    #[test]
    fn six_to_four_is_judged_by_its_ipv4() {
        assert!(!public("2002:7f00:1::1")); // 127.0.0.1
        assert!(!public("2002:a00:1::1")); // 10.0.0.1
        assert!(!public("2002:c0a8:101::1")); // 192.168.1.1
        assert!(public("2002:d6b:f628::1")); // 13.107.246.40
        assert_eq!(
            embedded_ipv4("2002:7f00:1::1".parse().unwrap()),
            Some(Ipv4Addr::LOCALHOST)
        );
    }

    #[test]
    fn teredo_is_refused_outright() {
        // Server 65.54.227.120, client 13.107.246.40 (stored inverted): both
        // public, still refused.
        assert!(!public("2001:0:4136:e378:8000:63bf:f294:9d7"));
        // Client 127.0.0.1 inverted in the last 32 bits.
        assert!(!public("2001:0:4136:e378::80ff:fffe"));
        assert_eq!(embedded_ipv4("2001:0:4136:e378::80ff:fffe".parse().unwrap()), None);
    }

    #[test]
    fn loopback_is_allowed_only_by_the_test_switch_in_every_form() {
        for loopback in [
            "127.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
        ] {
            let ip = loopback.parse().unwrap();
            assert!(!allowed(ip, false), "{loopback}");
            assert!(allowed(ip, true), "{loopback}");
        }
        // The test switch admits loopback only, not other private addresses.
        for private in ["10.0.0.1", "::ffff:10.0.0.1", "fe80::1"] {
            assert!(!allowed(private.parse().unwrap(), true), "{private}");
        }
        assert!(allowed("13.107.246.40".parse().unwrap(), false));
    }

    #[test]
    fn native_ipv6_embeds_nothing() {
        assert_eq!(embedded_ipv4("2603:1030::1".parse().unwrap()), None);
        assert_eq!(embedded_ipv4("fe80::1".parse().unwrap()), None);
    }
}
