//! The commands runtimes need (Docker networks, address reservations, level reports, published
//! ports): part of [`State`]'s apply, in a file of their own.

use super::*;

impl State {
    // ----- runtimes (Docker networks, address reservations) -----------------------------------

    /// Attaches one daemon's Docker network to the network named `c.network.name`, creating it
    /// when it does not exist. An existing network must match what was asked (subnet, gateway,
    /// VNI, internal), so that every daemon hands out addresses of the same subnet.
    pub(super) fn attach_docker(
        &mut self,
        index: u64,
        c: &AttachDockerNetwork,
        up: &mut Vec<Update>,
    ) -> Result<Network, ApplyError> {
        let Some(want) = &c.network else {
            return Err(ApplyError::invalid("no network given"));
        };
        if !self.hosts.contains_key(&c.host) {
            return Err(ApplyError::not_found(format!(
                "host {} is not a member of the cluster",
                c.host
            )));
        }
        if !is_hex_id(&c.docker_network_id) {
            return Err(ApplyError::invalid(format!(
                "invalid Docker network id {:?}: want 64 lowercase hex characters",
                c.docker_network_id
            )));
        }
        let attachment = DockerNetwork {
            host: c.host.clone(),
            network_id: c.docker_network_id.clone(),
        };
        if let Some(st) = self
            .networks
            .values()
            .find(|st| st.docker_position(&c.host, &c.docker_network_id).is_some())
        {
            if st.info.name == want.name {
                // A retry: already attached.
                return Ok(st.info.clone());
            }
            return Err(ApplyError::conflict(format!(
                "Docker network {} of host {} is already attached to network {}",
                short_id(&c.docker_network_id),
                c.host,
                st.info.name
            )));
        }
        let Some(id) = self.names.get(&want.name).cloned() else {
            let mut created = self.create_network(index, want, up)?;
            let Some(st) = self.networks.get_mut(&created.id) else {
                return Err(ApplyError::not_found(format!(
                    "network {} not found",
                    want.name
                )));
            };
            st.info.docker_networks.push(attachment);
            st.info.created_by_docker = true;
            created = st.info.clone();
            // The creation's update carries the record as it is now.
            if let Some(Update::NetworkAdded(n)) = up.last_mut() {
                *n = created.clone();
            }
            return Ok(created);
        };
        let Some(st) = self.networks.get_mut(&id) else {
            return Err(ApplyError::not_found(format!(
                "network {} not found",
                want.name
            )));
        };
        let name = &st.info.name;
        if let Some(subnet) = &want.subnet
            && Cidr::parse(subnet) != Some(st.subnet)
        {
            return Err(ApplyError::conflict(format!(
                "network {name} exists with subnet {}, not {subnet}: ask for --subnet {}",
                st.subnet, st.subnet
            )));
        }
        if let Some(gateway) = &want.gateway
            && *gateway != st.info.gateway
        {
            return Err(ApplyError::conflict(format!(
                "network {name} exists with gateway {}, not {gateway}",
                st.info.gateway
            )));
        }
        if let Some(vni) = want.vni
            && vni != st.info.vni
        {
            return Err(ApplyError::conflict(format!(
                "network {name} exists with VNI {}, not {vni}",
                st.info.vni
            )));
        }
        if want.internal != st.info.internal {
            return Err(ApplyError::conflict(format!(
                "network {name} exists and is {}internal: {} --internal",
                if st.info.internal { "" } else { "not " },
                if st.info.internal { "add" } else { "drop" }
            )));
        }
        st.info.docker_networks.push(attachment);
        up.push(Update::NetworkChanged(st.info.clone()));
        Ok(st.info.clone())
    }

    /// Detaches one daemon's Docker network. A network Docker created goes away with its last
    /// Docker network (unless endpoints remain); one made with `vxnet network create` stays.
    /// Detaching an unknown Docker network changes nothing (Docker retries removals).
    pub(super) fn detach_docker(
        &mut self,
        c: &DetachDockerNetwork,
        up: &mut Vec<Update>,
    ) -> Result<response::Kind, ApplyError> {
        let found = self.networks.iter_mut().find_map(|(id, st)| {
            st.docker_position(&c.host, &c.docker_network_id)
                .map(|pos| (id.clone(), st, pos))
        });
        let Some((id, st, pos)) = found else {
            return Ok(response::Kind::Noop(Empty {}));
        };
        st.info.docker_networks.remove(pos);
        let remove = st.info.created_by_docker
            && st.info.docker_networks.is_empty()
            && st.endpoints.is_empty();
        let info = st.info.clone();
        if remove {
            let removed = self.remove_network(&id, up)?;
            return Ok(response::Kind::NetworkRemoved(removed));
        }
        up.push(Update::NetworkChanged(info.clone()));
        Ok(response::Kind::DockerNetworkDetached(info))
    }

    /// Reserves an address for a host's runtime (its IPAM request comes before the endpoint).
    pub(super) fn reserve(
        &mut self,
        index: u64,
        c: &ReserveAddress,
        up: &mut Vec<Update>,
    ) -> Result<Reservation, ApplyError> {
        let net_id = self.resolve_net_state(&c.network)?.info.id.clone();
        if !self.hosts.contains_key(&c.host) {
            return Err(ApplyError::not_found(format!(
                "host {} is not a member of the cluster",
                c.host
            )));
        }
        let Some(st) = self.networks.get_mut(&net_id) else {
            return Err(ApplyError::not_found(format!(
                "network {} not found",
                c.network
            )));
        };
        let ip = st.allocate(c.ipv4.as_deref(), "")?;
        let r = Reservation {
            network_id: net_id,
            ipv4: ip_str(ip),
            host: c.host.clone(),
            created_index: index,
        };
        st.reservations.insert(ip, r.clone());
        up.push(Update::ReservationAdded(r.clone()));
        Ok(r)
    }

    /// Releases a host's reservation; one that is not there (or is another host's) is left
    /// alone and the release answers `noop`.
    pub(super) fn release(
        &mut self,
        c: &ReleaseAddress,
        up: &mut Vec<Update>,
    ) -> Result<response::Kind, ApplyError> {
        let net_id = self.resolve_net_state(&c.network)?.info.id.clone();
        let ip = parse_ipv4(&c.ipv4, "released")?;
        let Some(st) = self.networks.get_mut(&net_id) else {
            return Ok(response::Kind::Noop(Empty {}));
        };
        // An address an endpoint uses is not released: the runtime deletes the endpoint before
        // it releases the address, so such a release is a late one (a restarted runtime cleaning
        // up) and the reservation now belongs to the endpoint's owner.
        if st.reservations.get(&ip).is_none_or(|r| r.host != c.host) || st.used.contains_key(&ip) {
            return Ok(response::Kind::Noop(Empty {}));
        }
        let Some(r) = st.reservations.remove(&ip) else {
            return Ok(response::Kind::Noop(Empty {}));
        };
        up.push(Update::ReservationRemoved(r.clone()));
        Ok(response::Kind::AddressReleased(r))
    }

    pub(super) fn report_level(
        &mut self,
        c: &ReportLevel,
        up: &mut Vec<Update>,
    ) -> Result<(), ApplyError> {
        let Some(host) = self.hosts.get_mut(&c.host) else {
            return Err(ApplyError::not_found(format!(
                "host {} is not a member of the cluster",
                c.host
            )));
        };
        if host.level != c.level {
            host.level = c.level;
            up.push(Update::HostChanged(host.clone()));
        }
        Ok(())
    }

    // ----- published ports --------------------------------------------------------------------

    /// Checks mappings for `host` (ignoring endpoint `except`'s own): valid values, no two the
    /// same, none taken by another endpoint of the host. Docker's words for a taken port.
    pub(super) fn check_ports(
        &self,
        ports: &[PortMapping],
        host: &str,
        except: Option<&str>,
    ) -> Result<(), ApplyError> {
        for (i, p) in ports.iter().enumerate() {
            if p.protocol != "tcp" && p.protocol != "udp" {
                return Err(ApplyError::invalid(format!(
                    "invalid protocol {:?} in port mapping: tcp or udp",
                    p.protocol
                )));
            }
            for port in [p.host_port, p.container_port] {
                if !(1..=65535).contains(&port) {
                    return Err(ApplyError::invalid(format!(
                        "invalid port {port} in port mapping: 1 to 65535"
                    )));
                }
            }
            if !p.host_ip.is_empty() {
                parse_ipv4(&p.host_ip, "host")?;
            }
            let any = |ip: &str| ip.is_empty() || ip == "0.0.0.0";
            let clash = |q: &PortMapping| {
                q.protocol == p.protocol
                    && q.host_port == p.host_port
                    && (q.host_ip == p.host_ip || any(&q.host_ip) || any(&p.host_ip))
            };
            let taken = ports[..i].iter().any(clash)
                || self.endpoints().any(|e| {
                    e.host == host && Some(e.id.as_str()) != except && e.ports.iter().any(clash)
                });
            if taken {
                let ip = if any(&p.host_ip) {
                    "0.0.0.0"
                } else {
                    p.host_ip.as_str()
                };
                return Err(ApplyError::conflict(format!(
                    "Bind for {ip}:{} failed: port is already allocated",
                    p.host_port
                )));
            }
        }
        Ok(())
    }

    /// Replaces the published ports of one of a host's endpoints.
    pub(super) fn set_ports(
        &mut self,
        c: &SetEndpointPorts,
        up: &mut Vec<Update>,
    ) -> Result<Endpoint, ApplyError> {
        let Some(current) = self.endpoints().find(|e| e.id == c.endpoint_id).cloned() else {
            return Err(ApplyError::not_found(format!(
                "endpoint {} not found",
                short_id(&c.endpoint_id)
            )));
        };
        if current.host != c.host {
            return Err(ApplyError::conflict(format!(
                "endpoint {} belongs to host {}, not {}",
                current.name, current.host, c.host
            )));
        }
        self.check_ports(&c.ports, &c.host, Some(&current.id))?;
        let Some(st) = self.networks.get_mut(&current.network_id) else {
            return Err(ApplyError::not_found("network not found"));
        };
        if !c.ports.is_empty() && st.info.internal {
            return Err(ApplyError::invalid(format!(
                "network {} is internal: it has no way in, so no port can be published",
                st.info.name
            )));
        }
        let Some(ep) = st.endpoints.get_mut(&current.id) else {
            return Err(ApplyError::not_found("endpoint not found"));
        };
        if ep.ports != c.ports {
            ep.ports = c.ports.clone();
            up.push(Update::EndpointChanged(ep.clone()));
        }
        Ok(ep.clone())
    }
}
