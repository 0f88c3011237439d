//! `--publish` as Docker reads `-p`: `[HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|/udp]`, where both
//! ports may be ranges of equal length (`8000-8010:80-90`), and the `Ports` Docker's inspect
//! shows. vxnet never picks a host port: both are required.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use serde_json::{Value, json};
use vxnet_proto::PortMapping;

fn port_range(text: &str, what: &str) -> Result<RangeInclusive<u32>, String> {
    let port = |p: &str| -> Result<u32, String> {
        let n: u32 = p
            .parse()
            .map_err(|_| format!("invalid {what} {p:?}: not a number"))?;
        if !(1..=65535).contains(&n) {
            return Err(format!("invalid {what} {n}: 1 to 65535"));
        }
        Ok(n)
    };
    let (start, end) = match text.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(text)?;
            (p, p)
        }
    };
    if start > end {
        return Err(format!(
            "invalid {what} range {text}: its start is past its end"
        ));
    }
    Ok(start..=end)
}

/// Parses one `--publish` value into its mappings (one per port of a range).
pub fn parse_publish(spec: &str) -> Result<Vec<PortMapping>, String> {
    let (ports, protocol) = match spec.rsplit_once('/') {
        Some((p, proto)) => (p, proto),
        None => (spec, "tcp"),
    };
    if protocol != "tcp" && protocol != "udp" {
        return Err(format!("invalid protocol {protocol:?}: tcp or udp"));
    }
    let parts: Vec<&str> = ports.split(':').collect();
    let (host_ip, host, container) = match parts.as_slice() {
        [host, container] => (String::new(), *host, *container),
        [ip, host, container] => {
            let ip: Ipv4Addr = ip
                .parse()
                .map_err(|_| format!("invalid host address {ip:?}: not an IPv4 address"))?;
            // 0.0.0.0 is Docker's way of saying every address, as is no address.
            let ip = if ip.is_unspecified() {
                String::new()
            } else {
                ip.to_string()
            };
            (ip, *host, *container)
        }
        [_] => {
            return Err(
                "give HOSTPORT:CONTAINERPORT (vxnet does not pick a host port)".to_string(),
            );
        }
        _ => return Err("want [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|/udp]".to_string()),
    };
    let host = port_range(host, "host port")?;
    let container = port_range(container, "container port")?;
    if host.clone().count() != container.clone().count() {
        return Err(format!(
            "host port range {}-{} and container port range {}-{} differ in length",
            host.start(),
            host.end(),
            container.start(),
            container.end()
        ));
    }
    Ok(host
        .zip(container)
        .map(|(host_port, container_port)| PortMapping {
            protocol: protocol.to_string(),
            host_ip: host_ip.clone(),
            host_port,
            container_port,
        })
        .collect())
}

/// Docker's `Ports`: `{"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}`.
pub fn ports_json(ports: &[PortMapping]) -> Value {
    let mut by_port: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for p in ports {
        let ip = if p.host_ip.is_empty() {
            "0.0.0.0"
        } else {
            p.host_ip.as_str()
        };
        by_port
            .entry(format!("{}/{}", p.container_port, p.protocol))
            .or_default()
            .push(json!({"HostIp": ip, "HostPort": p.host_port.to_string()}));
    }
    json!(by_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(spec: &str) -> PortMapping {
        let mut v = parse_publish(spec).unwrap();
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    #[test]
    fn dockers_forms_parse() {
        let p = one("8080:80");
        assert_eq!(
            (
                p.protocol.as_str(),
                p.host_ip.as_str(),
                p.host_port,
                p.container_port
            ),
            ("tcp", "", 8080, 80)
        );
        assert_eq!(one("0.0.0.0:8080:80").host_ip, "", "every address");
        let p = one("127.0.0.1:53:5353/udp");
        assert_eq!(
            (p.protocol.as_str(), p.host_ip.as_str()),
            ("udp", "127.0.0.1")
        );
        let v = parse_publish("8000-8002:80-82").unwrap();
        assert_eq!(
            v.iter()
                .map(|p| (p.host_port, p.container_port))
                .collect::<Vec<_>>(),
            vec![(8000, 80), (8001, 81), (8002, 82)]
        );
    }

    #[test]
    fn bad_forms_are_clear_errors() {
        for (spec, says) in [
            ("8080", "HOSTPORT:CONTAINERPORT"),
            ("0:80", "1 to 65535"),
            ("8080:0", "1 to 65535"),
            ("70000:80", "1 to 65535"),
            ("8000-8010:80-85", "differ in length"),
            ("abc:80", "not a number"),
            ("8080:80/sctp", "tcp or udp"),
            ("1.2.3:8080:80", "not an IPv4 address"),
            ("90-80:90-80", "past its end"),
            ("a:b:c:d", "want"),
        ] {
            let e = parse_publish(spec).unwrap_err();
            assert!(e.contains(says), "{spec}: {e}");
        }
    }

    #[test]
    fn ports_show_as_docker_shows_them() {
        let v = parse_publish("8080:80").unwrap();
        assert_eq!(
            ports_json(&v),
            json!({"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]})
        );
    }
}
