//! Netlink link management and namespaces against the real kernel (root only).

#[allow(dead_code)]
mod io_common;

use std::net::{IpAddr, Ipv4Addr};

use io_common::{anon_ns, is_root, nl, ping, unique};
use vxnet_dataplane::io::netlink::{next_free_ifname_in_netns, remove_from_netns};
use vxnet_dataplane::io::{IoError, LinkRef, NamedNetns, NetnsHandle, VethSpec, in_netns_blocking};

const MAC1: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];
const MAC2: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x03];

#[test]
fn bridge_is_idempotent_and_delete_leaves_nothing() {
    if !is_root() {
        return;
    }
    let host = anon_ns();
    nl(&host, |nl| async move {
        let a = nl.ensure_bridge("vxbr0", 1450).await?;
        let b = nl.ensure_bridge("vxbr0", 1400).await?;
        assert_eq!(a, b, "ensure twice = one bridge");
        let links = nl.list_links_with_prefix("vxbr").await?;
        assert_eq!(links.len(), 1, "{links:?}");
        let br = &links[0];
        assert_eq!(br.kind.as_deref(), Some("bridge"));
        assert_eq!(br.mtu, 1400, "second ensure applies the new MTU");
        assert!(br.up);
        assert_eq!(nl.link_by_name("vxbr0").await?.as_ref(), Some(br));
        assert_eq!(
            nl.link_by_index(a).await?.map(|l| l.name),
            Some("vxbr0".to_owned())
        );

        // A non-bridge under the name is refused, not silently reused.
        nl.handle()
            .link()
            .add(rtnetlink::LinkVeth::new("vxdummy0", "vxdummy1").build())
            .execute()
            .await
            .map_err(|e| IoError::Invalid(e.to_string()))?;
        assert!(matches!(
            nl.ensure_bridge("vxdummy0", 1400).await,
            Err(IoError::Invalid(_))
        ));

        nl.delete_link("vxbr0").await?;
        nl.delete_link("vxbr0").await?; // missing is fine
        nl.delete_link("vxdummy0").await?;
        assert!(nl.link_by_name("vxbr0").await?.is_none());
        assert!(nl.list_links_with_prefix("vx").await?.is_empty());
        assert!(matches!(
            nl.attach("vxgone".into(), a, 1400).await,
            Err(IoError::NotFound(_))
        ));
        assert!(matches!(
            nl.link_by_name("this-name-is-too-long").await,
            Err(IoError::Invalid(_))
        ));
        Ok(())
    })
    .expect("netlink in test namespace");
}

#[test]
fn mtu_of_address_finds_the_owning_interface() {
    if !is_root() {
        return;
    }
    let host = anon_ns();
    nl(&host, |nl| async move {
        let veth = rtnetlink::LinkVeth::new("vxu0", "vxu1").mtu(1400).build();
        nl.handle()
            .link()
            .add(veth)
            .execute()
            .await
            .map_err(|e| IoError::Invalid(e.to_string()))?;
        let ip: IpAddr = Ipv4Addr::new(192, 0, 2, 10).into();
        nl.add_address("vxu0".into(), ip, 24).await?;
        nl.add_address("vxu0".into(), ip, 24).await?; // idempotent
        assert_eq!(nl.mtu_of_address(ip).await?, Some(1400));
        assert_eq!(
            nl.mtu_of_address(Ipv4Addr::new(192, 0, 2, 11).into())
                .await?,
            None
        );
        assert_eq!(
            nl.mtu_of_address(Ipv4Addr::LOCALHOST.into()).await?,
            Some(65536)
        );
        // The inner MTU the agent derives: underlay - 50.
        nl.set_mtu("vxu0".into(), 1500).await?;
        assert_eq!(nl.mtu_of_address(ip).await?.map(|m| m - 50), Some(1450));
        Ok(())
    })
    .expect("netlink in test namespace");
}

#[test]
fn netns_handles_open_by_name_path_and_pid() {
    if !is_root() {
        return;
    }
    let name = unique("open");
    let path;
    {
        let named = NamedNetns::create(&name).expect("create named netns");
        path = format!("/run/netns/{name}");
        assert!(std::path::Path::new(&path).exists());
        let by_name = NetnsHandle::open(&name).expect("open by name");
        let by_path = NetnsHandle::open(&path).expect("open by path");
        assert_eq!(by_name.inode().ok(), named.handle().inode().ok());
        assert_eq!(by_path.inode().ok(), named.handle().inode().ok());
        assert!(matches!(
            NamedNetns::create(&name),
            Err(IoError::AlreadyExists(_))
        ));
        // A named namespace is a real one: a fresh stack with only lo.
        let links = nl(named.handle(), |nl| async move { nl.list_links().await }).expect("list");
        assert_eq!(
            links.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
            ["lo"]
        );
    }
    assert!(
        !std::path::Path::new(&path).exists(),
        "guard drop deletes the namespace"
    );
    assert!(matches!(
        NetnsHandle::open(&name),
        Err(IoError::NotFound(_))
    ));

    let by_pid = NetnsHandle::open(&std::process::id().to_string()).expect("open by pid");
    let init = NetnsHandle::open("/proc/self/ns/net").expect("open own");
    assert_eq!(by_pid.inode().ok(), init.inode().ok());
    assert!(matches!(
        NetnsHandle::open("/proc/self/ns/uts"),
        Err(IoError::Invalid(_))
    ));
    assert!(matches!(
        NetnsHandle::open("/etc/hostname"),
        Err(IoError::Invalid(_))
    ));
    assert!(matches!(
        NetnsHandle::open("999999999"),
        Err(IoError::NotFound(_))
    ));
}

#[test]
fn container_veth_end_to_end() {
    if !is_root() {
        return;
    }
    // The agent's namespace (bridge, host ends) and two containers; the first one named.
    let host = anon_ns();
    let ct1_named = NamedNetns::create(&unique("ct")).expect("named netns");
    let ct1 = NetnsHandle::open(ct1_named.name()).expect("open container netns");
    let ct2 = NetnsHandle::create_anonymous().expect("anon netns");
    let ip1 = Ipv4Addr::new(10, 77, 0, 2);
    let ip2 = Ipv4Addr::new(10, 77, 0, 3);

    let (ct1_ref, ct2_ref) = (&ct1, &ct2);
    let (br, created) = nl(&host, |nl| async move {
        let br = nl.ensure_bridge("vxbr0", 1450).await?;
        let spec = VethSpec {
            host_name: "vxv-ct1",
            bridge_index: br,
            netns: ct1_ref,
            peer_name: "eth0",
            mac: MAC1,
            ipv4: ip1,
            prefix_len: 24,
            mtu: 1450,
            gso_max_size: Some(60_000),
            gateway: None,
        };
        let created = nl.create_veth_into_netns(&spec).await?;
        // Same host name again: refused, and the first pair is untouched.
        assert!(matches!(
            nl.create_veth_into_netns(&spec).await,
            Err(IoError::AlreadyExists(_))
        ));
        let bad = VethSpec {
            host_name: "vxv-bad",
            mac: [0x01, 0, 0, 0, 0, 1],
            ..spec
        };
        assert!(matches!(
            nl.create_veth_into_netns(&bad).await,
            Err(IoError::Invalid(_))
        ));
        let spec2 = VethSpec {
            host_name: "vxv-ct2",
            netns: ct2_ref,
            mac: MAC2,
            ipv4: ip2,
            ..spec
        };
        nl.create_veth_into_netns(&spec2).await?;

        let host_end = nl.link_by_name("vxv-ct1").await?.expect("host end");
        assert_eq!(host_end.index, created.host_index);
        assert_eq!(host_end.controller, Some(br));
        assert_eq!(host_end.mtu, 1450);
        assert!(host_end.up);
        assert_eq!(host_end.kind.as_deref(), Some("veth"));
        assert!(
            nl.link_by_name("vxv-bad").await?.is_none(),
            "failed create leaves nothing"
        );
        Ok((br, created))
    })
    .expect("create container links");
    assert!(br > 0);

    // Inside the container: eth0 with the MAC, IP, MTU asked for; lo and eth0 up.
    let (eth0, addrs) = in_netns_blocking(&ct1, |nl| async move {
        let eth0 = nl.link_by_name("eth0").await?.expect("eth0 in container");
        let lo = nl.link_by_name("lo").await?.expect("lo");
        assert!(lo.up);
        let has_ip = nl.mtu_of_address(ip1.into()).await?;
        Ok((eth0, has_ip))
    })
    .expect("inspect container");
    assert_eq!(eth0.index, created.peer_index);
    assert_eq!(eth0.mac, Some(MAC1));
    assert_eq!(eth0.mtu, 1450);
    assert!(eth0.up);
    assert_eq!(addrs, Some(1450), "eth0 owns 10.77.0.2");

    // Container to container through the bridge.
    assert!(ping(&ct1, ip2, 5), "ping ct1 -> ct2 over the bridge");
    assert!(ping(&ct2, ip1, 5), "ping ct2 -> ct1 over the bridge");
    // The bridge and its ports stay address-free (no IPv6 link-local chatter into the overlay).
    let host_addrs = nl(&host, |nl| async move {
        Ok((
            nl.addresses("vxbr0".into()).await?,
            nl.addresses("vxv-ct1".into()).await?,
        ))
    })
    .expect("host addresses");
    assert_eq!(host_addrs, (vec![], vec![]));
    let ct_addrs = nl(&ct1, |nl| async move { nl.addresses("eth0".into()).await }).expect("addrs");
    assert!(ct_addrs.contains(&(ip1.into(), 24)), "{ct_addrs:?}");

    // Names for a second interface, then removal from inside the namespace.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        assert_eq!(
            next_free_ifname_in_netns(&ct1, "eth").await.ok().as_deref(),
            Some("eth1")
        );
        remove_from_netns(&ct1, "eth0").await.expect("remove eth0");
        remove_from_netns(&ct1, "eth0")
            .await
            .expect("remove twice is fine");
        assert_eq!(
            next_free_ifname_in_netns(&ct1, "eth").await.ok().as_deref(),
            Some("eth0")
        );
    });
    let left = nl(&host, |nl| async move {
        nl.list_links_with_prefix("vxv-").await
    })
    .expect("list");
    assert_eq!(
        left.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        ["vxv-ct2"]
    );
    ct1_named.delete().expect("delete named netns");
}

#[test]
fn in_netns_reports_errors_and_panics() {
    if !is_root() {
        return;
    }
    let ns = anon_ns();
    let err = nl(&ns, |_nl| async move {
        Err::<(), _>(IoError::NotFound("x".into()))
    });
    assert!(matches!(err, Err(IoError::NotFound(_))));
    let caught = std::panic::catch_unwind(|| {
        let _ = nl(&ns, |_nl| async move {
            if LinkRef::from("lo") == LinkRef::Name("lo") {
                panic!("inside the namespace");
            }
            Ok(())
        });
    });
    assert!(
        caught.is_err(),
        "a panic inside the namespace thread reaches the caller"
    );
}
