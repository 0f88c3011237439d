//! How `vxnet` prints things: the shapes and texts of `docker network`.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde_json::{Map, Value, json};
use vxnet_proto::{Endpoint, Host, Network, Reservation};

/// `docker network ls` shows 12 characters of an id unless `--no-trunc`.
pub const SHORT_ID: usize = 12;

/// An id shortened as docker does.
pub fn short_id(id: &str) -> &str {
    id.get(..SHORT_ID).unwrap_or(id)
}

/// `2026-11-23T15:41:48.123Z` from milliseconds since the Unix epoch (RFC 3339, UTC, always
/// three fractional digits, as docker prints `Created`).
pub fn rfc3339(unix_ms: u64) -> String {
    // Only a corrupt clock goes past jiff's range (the end of year 9999): show its last instant.
    let ts = i64::try_from(unix_ms)
        .ok()
        .and_then(|ms| Timestamp::from_millisecond(ms).ok())
        .unwrap_or(Timestamp::MAX);
    format!("{ts:.3}")
}

/// `2026-11-23T15:41:48Z` from milliseconds since the Unix epoch: RFC 3339, UTC, whole seconds
/// (the milliseconds dropped), for dates that are not docker's (`cluster members`).
pub fn rfc3339_seconds(unix_ms: u64) -> String {
    let ts = i64::try_from(unix_ms / 1000)
        .ok()
        .and_then(|s| Timestamp::from_second(s).ok())
        .unwrap_or(Timestamp::MAX);
    format!("{ts:.0}")
}

/// `docker network inspect`'s JSON for one network (plus vxnet's `Host`/`Peers` details).
pub fn network_json(
    net: &Network,
    endpoints: &[&Endpoint],
    reservations: &[&Reservation],
    hosts: &[Host],
) -> Value {
    let mut ipam_config = Map::new();
    ipam_config.insert("Subnet".into(), json!(net.subnet));
    if !net.ip_range.is_empty() {
        ipam_config.insert("IPRange".into(), json!(net.ip_range));
    }
    ipam_config.insert("Gateway".into(), json!(net.gateway));
    if !net.aux_addresses.is_empty() {
        ipam_config.insert("AuxiliaryAddresses".into(), json!(net.aux_addresses));
    }
    let containers: Map<String, Value> = endpoints
        .iter()
        .map(|e| {
            (
                e.sandbox.clone(),
                json!({
                    "Name": e.name,
                    "EndpointID": e.id,
                    "MacAddress": e.mac,
                    "IPv4Address": format!("{}/{}", e.ipv4, e.prefix_len),
                    "IPv6Address": "",
                    "Aliases": e.aliases,
                    "Host": e.host,
                    "Ports": crate::cli::ports::ports_json(&e.ports),
                }),
            )
        })
        .collect();
    let mut options: BTreeMap<String, String> = net.options.clone();
    options.insert(
        "com.docker.network.driver.overlay.vxlanid_list".into(),
        net.vni.to_string(),
    );
    let peer_names: std::collections::BTreeSet<&str> =
        endpoints.iter().map(|e| e.host.as_str()).collect();
    let peers: Vec<Value> = hosts
        .iter()
        .filter(|h| peer_names.contains(h.name.as_str()))
        .map(|h| json!({"Name": h.name, "IP": h.underlay}))
        .collect();
    json!({
        "Name": net.name,
        "Id": net.id,
        "Created": rfc3339(net.created_unix_ms),
        "Scope": "global",
        "Driver": net.driver,
        "EnableIPv4": true,
        "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Options": {}, "Config": [Value::Object(ipam_config)]},
        "Internal": net.internal,
        "Attachable": true,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": containers,
        "Options": options,
        "Labels": net.labels,
        "Peers": peers,
        "DockerNetworks": net
            .docker_networks
            .iter()
            .map(|d| json!({"Host": d.host, "ID": d.network_id}))
            .collect::<Vec<_>>(),
        "Reservations": reservations
            .iter()
            .map(|r| json!({"IPv4Address": r.ipv4, "Host": r.host}))
            .collect::<Vec<_>>(),
    })
}

/// One line of `docker network ls --format json`.
pub fn network_ls_json(net: &Network, no_trunc: bool) -> Value {
    let id = if no_trunc {
        net.id.as_str()
    } else {
        short_id(&net.id)
    };
    let labels: Vec<String> = net.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    json!({
        "CreatedAt": rfc3339(net.created_unix_ms),
        "Driver": net.driver,
        "ID": id,
        "IPv4": "true",
        "IPv6": "false",
        "Internal": net.internal.to_string(),
        "Labels": labels.join(","),
        "Name": net.name,
        "Scope": "global",
    })
}

/// Whether `net` passes every `docker network ls -f` filter (`name=` substring, `id=` prefix,
/// `driver=`, `label=key` or `label=key=value`). Filters with the same key are ORed, different
/// keys ANDed, as docker does. An unknown key is an error.
pub fn matches_filters(net: &Network, filters: &[String]) -> Result<bool, String> {
    let mut by_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for filter in filters {
        let (key, value) = filter
            .split_once('=')
            .ok_or_else(|| format!("bad format of filter (expected name=value): {filter}"))?;
        by_key.entry(key).or_default().push(value);
    }
    for (key, values) in by_key {
        let any = match key {
            "name" => values.iter().any(|v| net.name.contains(v)),
            "id" => values.iter().any(|v| net.id.starts_with(v)),
            "driver" => values.iter().any(|v| net.driver == *v),
            "label" => values.iter().any(|v| match v.split_once('=') {
                Some((k, val)) => net.labels.get(k).is_some_and(|x| x == val),
                None => net.labels.contains_key(*v),
            }),
            "scope" => values.contains(&"global"),
            "type" => values.contains(&"custom"),
            other => return Err(format!("invalid filter '{other}'")),
        };
        if !any {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One line about a frame, like `tcpdump -e -n` would print it (brief).
pub fn frame_summary(frame: &[u8]) -> String {
    use vxnet_dataplane::wire::{ArpPacket, EtherType, EthernetFrame, Ipv4Packet, Ipv6Packet};
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return format!("truncated frame, {} bytes", frame.len());
    };
    let l2 = format!("{} > {}", eth.src_addr(), eth.dst_addr());
    let l3 = match eth.ethertype() {
        EtherType::IPV4 => match Ipv4Packet::new_checked(eth.payload()) {
            Ok(ip) => format!(
                "IPv4 {} > {} proto {}",
                ip.src_addr(),
                ip.dst_addr(),
                ip.next_header()
            ),
            Err(_) => "IPv4 (malformed)".into(),
        },
        EtherType::IPV6 => match Ipv6Packet::new_checked(eth.payload()) {
            Ok(ip) => format!(
                "IPv6 {} > {} next {}",
                ip.src_addr(),
                ip.dst_addr(),
                ip.next_header()
            ),
            Err(_) => "IPv6 (malformed)".into(),
        },
        EtherType::ARP => match ArpPacket::new_checked(eth.payload()) {
            Ok(arp) => format!(
                "ARP {:?} who-has {} tell {}",
                arp.operation(),
                arp.target_protocol_addr(),
                arp.sender_protocol_addr()
            ),
            Err(_) => "ARP (malformed)".into(),
        },
        other => format!("ethertype 0x{:04x}", other.0),
    };
    format!("{l2}, {l3}, length {}", frame.len())
}

/// Left-aligned columns separated by at least three spaces (docker's tabwriter look).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<&str> = cells.collect();
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}", width = widths[i] + 3));
            }
        }
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> Network {
        Network {
            id: "a".repeat(64),
            name: "frontend".into(),
            driver: "overlay".into(),
            subnet: "10.20.0.0/24".into(),
            gateway: "10.20.0.1".into(),
            vni: 4096,
            labels: [("env".to_string(), "prod".to_string())].into(),
            created_unix_ms: 1_795_444_908_123,
            ..Network::default()
        }
    }

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_444_908_123), "2026-11-23T14:41:48.123Z");
        assert_eq!(rfc3339(253_402_207_199_999), "9999-12-30T21:59:59.999Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-30T22:00:00.999Z");
        assert_eq!(rfc3339_seconds(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_seconds(1_795_444_908_999), "2026-11-23T14:41:48Z");
        assert_eq!(rfc3339_seconds(u64::MAX), "9999-12-30T22:00:00Z");
    }

    #[test]
    fn inspect_has_docker_fields() {
        let ep = Endpoint {
            id: "e".repeat(64),
            name: "web1".into(),
            host: "h2".into(),
            sandbox: "c1".into(),
            ipv4: "10.20.0.2".into(),
            prefix_len: 24,
            mac: "02:42:0a:14:00:02".into(),
            vni: 4096,
            ..Endpoint::default()
        };
        let hosts = [Host {
            name: "h2".into(),
            underlay: "192.168.200.2".into(),
            ..Host::default()
        }];
        let v = network_json(&net(), &[&ep], &[], &hosts);
        assert_eq!(v["Name"], "frontend");
        assert_eq!(v["IPAM"]["Config"][0]["Subnet"], "10.20.0.0/24");
        assert_eq!(v["Containers"]["c1"]["IPv4Address"], "10.20.0.2/24");
        assert_eq!(
            v["Options"]["com.docker.network.driver.overlay.vxlanid_list"],
            "4096"
        );
        assert_eq!(v["Peers"][0]["IP"], "192.168.200.2");
        assert_eq!(v["Labels"]["env"], "prod");
    }

    #[test]
    fn filters_follow_docker() {
        let n = net();
        let f =
            |v: &[&str]| matches_filters(&n, &v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(f(&["name=front"]), Ok(true));
        assert_eq!(f(&["name=back"]), Ok(false));
        assert_eq!(f(&["name=back", "name=front"]), Ok(true));
        assert_eq!(f(&["name=front", "driver=bridge"]), Ok(false));
        assert_eq!(f(&["label=env"]), Ok(true));
        assert_eq!(f(&["label=env=dev"]), Ok(false));
        assert_eq!(f(&["id=aaaa"]), Ok(true));
        assert!(f(&["colour=red"]).is_err());
        assert!(f(&["name"]).is_err());
    }

    #[test]
    fn tables_align() {
        let t = table(&["NETWORK ID", "NAME"], &[vec!["abc".into(), "n1".into()]]);
        assert_eq!(t, "NETWORK ID   NAME\nabc          n1\n");
    }
}
