//! Happy paths of the `tarn` command line: pools, datasets, volume import and export.

mod common;

use common::{allocated, random_bytes, same_bytes, Env};

#[test]
fn pool_create_list_status_and_json() {
    let env = Env::new();
    let path = env.pool("tank", "128M");
    assert!(path.exists());

    let out = env.run(["pool", "list"]);
    let text = out.ok();
    let mut lines = text.lines();
    let header = lines.next().expect("header");
    for col in ["NAME", "SIZE", "ALLOC", "FREE", "CAP", "HEALTH", "PATH"] {
        assert!(header.contains(col), "{header}");
    }
    let row = lines.next().expect("row");
    assert!(row.starts_with("tank "), "{row}");
    assert!(row.contains("128M") && row.contains("ONLINE"), "{row}");

    let list = env.run(["pool", "list", "--json"]).json();
    let p = &list[0];
    assert_eq!(p["name"], "tank");
    assert_eq!(p["size"], 128u64 << 20);
    assert_eq!(p["health"], "ONLINE");
    assert!(p["free"].as_u64().expect("free") > 120 << 20);
    assert_eq!(
        p["path"],
        path.canonicalize().expect("canon").to_str().expect("utf-8")
    );

    let st = env.run(["pool", "status", "tank", "--json"]).json();
    assert_eq!(st["name"], "tank");
    assert_eq!(st["version"], pool::phys::FORMAT_VERSION);
    assert_eq!(st["size"], 128u64 << 20);
    assert!(st["txg"].as_u64().expect("txg") >= 1);
    assert!(st["allocated"].as_u64().is_some());
    assert!(st["free"].as_u64().is_some());
    assert_eq!(st["errors"].as_array().expect("errors").len(), 0);
    // GUIDs are 64-bit: a string, so that readers holding numbers as doubles keep them whole;
    // the same one in `pool list`.
    let guid = st["guid"].as_str().expect("guid is a string");
    assert!(guid.parse::<u64>().is_ok(), "{guid}");
    assert_eq!(p["guid"], st["guid"]);

    let human = env.run(["pool", "status", "tank"]);
    let human = human.ok();
    let format = format!("format: version {}", pool::phys::FORMAT_VERSION);
    for k in [
        "pool: tank",
        "size:",
        "allocated:",
        "free:",
        "txg:",
        format.as_str(),
    ] {
        assert!(human.contains(k), "{human}");
    }
    assert!(human.contains("No known data errors"), "{human}");

    // Scripted, parsable listing.
    let h = env.run(["pool", "list", "-H", "-p"]);
    let fields: Vec<&str> = h.ok().trim_end().split('\t').collect();
    assert_eq!(fields[0], "tank");
    assert_eq!(fields[1], (128u64 << 20).to_string());
}

#[test]
fn pool_export_import_round_trip() {
    let env = Env::new();
    let path = env.pool("tank", "64M");
    let data = random_bytes(3 << 20, 1);
    env.import("tank/vm", &data);

    env.run(["pool", "export", "tank"]).ok();
    assert_eq!(
        env.run(["pool", "list", "--json"]).json(),
        serde_json::json!([])
    );
    env.run(["list", "tank"]).fails_with("not imported");

    env.run(["pool", "import", path.to_str().expect("utf-8")])
        .ok();
    same_bytes(&env.export("tank/vm"), &data, "volume after export/import");
    // A second import of the same pool is refused.
    env.run(["pool", "import", path.to_str().expect("utf-8")])
        .fails_with("already imported");
}

#[test]
fn pool_destroy_wipes_labels_and_removes_file() {
    let env = Env::new();
    let path = env.pool("tank", "64M");
    env.run(["vol", "create", "tank/v", "--size", "1M"]).ok();
    let link = env.path("link.tarn");
    std::fs::hard_link(&path, &link).expect("hard link");

    env.run(["pool", "destroy", "tank"]).ok();
    assert!(!path.exists(), "the pool file is removed");
    assert_eq!(
        env.run(["pool", "list", "--json"]).json(),
        serde_json::json!([])
    );
    // The same bytes under another name no longer import: the labels are gone.
    env.run(["pool", "import", link.to_str().expect("utf-8")])
        .fails_with("not a tarn pool");
    // The name is free again.
    env.pool("tank", "64M");
}

#[test]
fn vol_import_export_round_trip_is_sparse() {
    let env = Env::new();
    env.pool("tank", "256M");
    // 40 MiB image: data, a large zero gap (written zeroes, not a hole), data, an unaligned
    // tail; plus a real hole in the middle of the file.
    let len = (40 << 20) + 1000;
    let mut img = vec![0u8; len];
    img[..(4 << 20)].copy_from_slice(&random_bytes(4 << 20, 2));
    img[(20 << 20)..(22 << 20)].copy_from_slice(&random_bytes(2 << 20, 3));
    let tail = len - 5000;
    img[tail..].copy_from_slice(&random_bytes(5000, 4));
    // Sparse source: write only the data parts.
    let src = env.path("img.raw");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(&src).expect("create");
        f.set_len(len as u64).expect("set_len");
        f.write_all_at(&img[..(4 << 20)], 0).expect("write");
        // Explicit zeroes: these must not take space in the pool either.
        f.write_all_at(&vec![0u8; 8 << 20], 8 << 20)
            .expect("write zeros");
        f.write_all_at(&img[(20 << 20)..(22 << 20)], 20 << 20)
            .expect("write");
        f.write_all_at(&img[tail..], tail as u64).expect("write");
    }
    env.run(["vol", "import", src.to_str().expect("utf-8"), "tank/img"])
        .ok();

    let info = env.run(["get", "all", "tank/img", "--json"]).json();
    let get = |p: &str| {
        info.as_array()
            .expect("rows")
            .iter()
            .find(|r| r["property"] == p)
            .map(|r| r["value"].clone())
            .unwrap_or_else(|| panic!("no {p}"))
    };
    let bs = get("volblocksize").as_u64().expect("bs");
    assert_eq!(bs, u64::from(zvol::DEFAULT_BLOCK_SIZE));
    let volsize = get("volsize").as_u64().expect("volsize");
    assert_eq!(volsize, (len as u64).div_ceil(bs) * bs, "sized to the file");
    let used = get("used").as_u64().expect("used");
    assert!(
        used < (7 << 20) + (1 << 20),
        "zero blocks stay holes: used {used}"
    );

    let out = env.path("out.raw");
    env.run(["vol", "export", "tank/img", out.to_str().expect("utf-8")])
        .ok();
    let back = std::fs::read(&out).expect("read export");
    assert_eq!(back.len() as u64, volsize);
    same_bytes(&back[..len], &img, "exported image");
    assert!(
        back[len..].iter().all(|&b| b == 0),
        "padding reads as zeroes"
    );
    let alloc = allocated(&out);
    assert!(
        alloc < (7 << 20) + (2 << 20),
        "export is sparse where the volume reads zeroes: {alloc} bytes allocated"
    );
    // No temporary files are left behind.
    let names: Vec<String> = std::fs::read_dir(env.dir.path())
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("tarn-export")),
        "{names:?}"
    );

    // Export to stdout gives the same bytes.
    let piped = env
        .cmd(["vol", "export", "tank/img", "-"])
        .output()
        .expect("run");
    assert!(piped.status.success());
    same_bytes(&piped.stdout[..len], &img, "export to stdout");
}

#[test]
fn pool_trim_gives_a_destroyed_volumes_space_back_to_the_file_system() {
    let env = Env::new();
    let pool = env.pool("tank", "256M");
    env.import("tank/keep", &random_bytes(4 << 20, 7));
    env.import("tank/big", &random_bytes(48 << 20, 8));
    let before = allocated(&pool);
    env.run(["destroy", "tank/big"]).ok();
    let kept = allocated(&pool);
    assert!(
        kept + (1 << 20) > before,
        "without trim the pool file keeps its space for reuse: {before} -> {kept}"
    );
    let out = env.run(["pool", "trim", "tank", "--json"]).json();
    assert_eq!(out["pool"], "tank");
    let bytes = out["bytes"].as_u64().expect("bytes");
    assert!(bytes >= 47 << 20, "trimmed only {bytes} bytes");
    let after = allocated(&pool);
    assert!(
        after + (47 << 20) <= kept,
        "the file still holds the space: {kept} -> {after}"
    );
    let text = env.run(["pool", "trim", "tank"]).ok().to_string();
    assert!(text.starts_with("trimmed "), "{text}");
    same_bytes(
        &env.export("tank/keep"),
        &random_bytes(4 << 20, 7),
        "a live volume after trim",
    );
    env.run(["pool", "scrub", "tank"]).ok();
    env.run(["pool", "trim", "nosuch"]).fails_with("nosuch");
}

#[test]
fn vol_import_into_existing_volume_overwrites_and_zeroes() {
    let env = Env::new();
    env.pool("tank", "128M");
    env.run([
        "vol",
        "create",
        "tank/v",
        "--size",
        "8M",
        "--block-size",
        "4K",
    ])
    .ok();
    let old = random_bytes(8 << 20, 5);
    env.import("tank/v", &old);
    // New image: 6 MiB with a zero middle; the volume's last 2 MiB are left as they were.
    let mut new = random_bytes(6 << 20, 6);
    new[(1 << 20)..(3 << 20)].fill(0);
    env.import("tank/v", &new);
    let back = env.export("tank/v");
    assert_eq!(back.len(), 8 << 20);
    same_bytes(&back[..(6 << 20)], &new, "overwritten part");
    same_bytes(&back[(6 << 20)..], &old[(6 << 20)..], "untouched tail");

    // From a pipe (stdin): the volume must exist; the data lands at the start.
    let piped = random_bytes(1 << 20, 7);
    env.run_stdin(["vol", "import", "-", "tank/v"], &piped).ok();
    same_bytes(&env.export("tank/v")[..(1 << 20)], &piped, "stdin import");
}

#[test]
fn datasets_list_get_set_destroy_and_json() {
    let env = Env::new();
    env.pool("tank", "64M");
    env.pool("pond", "64M");
    env.run(["vol", "create", "tank/a", "--size", "10M"]).ok();
    env.run([
        "vol",
        "create",
        "tank/b",
        "-s",
        "1G",
        "-b",
        "64K",
        "-o",
        "com.example:owner=alice",
    ])
    .ok();
    env.run(["vol", "create", "pond/c", "--size", "1.5M"]).ok();

    let all = env.run(["list"]);
    let text = all.ok();
    let header = text.lines().next().expect("header");
    assert!(header.starts_with("NAME"), "{header}");
    for n in ["tank/a", "tank/b", "pond/c"] {
        assert!(text.contains(n), "{text}");
    }
    // Columns are aligned: every line's second column starts at the same place.
    let col = header.find("TYPE").expect("TYPE");
    for l in text.lines().skip(1) {
        assert_eq!(&l[col..col + 6], "volume", "{text}");
    }

    let json = env.run(["list", "tank", "--json"]).json();
    let names: Vec<&str> = json
        .as_array()
        .expect("array")
        .iter()
        .map(|d| d["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["tank/a", "tank/b"]);
    assert_eq!(json[1]["size"], 1u64 << 30);
    assert_eq!(json[1]["block_size"], 65536);
    assert_eq!(json[1]["props"]["com.example:owner"], "alice");

    let sel = env
        .run([
            "list",
            "-t",
            "volume",
            "-o",
            "name,volsize,com.example:owner",
            "--json",
        ])
        .json();
    assert_eq!(sel.as_array().expect("array").len(), 3);
    assert_eq!(sel[0]["name"], "pond/c");
    assert_eq!(sel[0]["volsize"], 1_572_864);
    assert_eq!(sel[0]["com.example:owner"], serde_json::Value::Null);
    assert_eq!(sel[2]["com.example:owner"], "alice");
    // Keys come in the order asked for, as the table's columns do.
    let listed = env.run(["list", "tank", "-o", "volsize,name,guid,name", "--json"]);
    let raw = listed.ok();
    let at = |k: &str| raw.find(&format!("\"{k}\"")).expect(k);
    assert!(
        at("volsize") < at("name") && at("name") < at("guid"),
        "{raw}"
    );
    // A key asked for twice comes once (an object with a repeated key is not JSON to all).
    let first = raw.split("},").next().unwrap_or_default();
    assert_eq!(first.matches("\"name\"").count(), 1, "{raw}");

    let h = env.run([
        "list",
        "tank/b",
        "-H",
        "-p",
        "-o",
        "name,volsize,volblocksize",
    ]);
    assert_eq!(h.ok(), "tank/b\t1073741824\t65536\n");
    env.run(["list", "-t", "filesystem", "-H"]).ok();
    assert_eq!(env.run(["list", "-t", "filesystem", "-H"]).stdout, "");

    // get: builtins, aliases, user props, parsable values.
    let g = env.run([
        "get",
        "-H",
        "-p",
        "size,blocksize,type,com.example:owner",
        "tank/b",
    ]);
    assert_eq!(
        g.ok(),
        "tank/b\tvolsize\t1073741824\t-\n\
         tank/b\tvolblocksize\t65536\t-\n\
         tank/b\ttype\tvolume\t-\n\
         tank/b\tcom.example:owner\talice\tlocal\n"
    );
    let human = env.run(["get", "volsize", "tank/b"]);
    assert!(human.ok().contains("1.00G"), "{}", human.stdout);
    let ids = env
        .run([
            "get",
            "id,creation,createtxg,used,name,pool",
            "tank/a",
            "--json",
        ])
        .json();
    assert_eq!(ids.as_array().expect("rows").len(), 6);
    assert!(ids[0]["value"].as_u64().is_some());
    assert!(ids[1]["value"].as_u64().expect("creation") > 1_600_000_000);

    // set: user properties (empty value removes), volsize grows.
    env.run(["set", "com.example:owner=bob", "note=hello world", "tank/b"])
        .ok();
    let g = env.run(["get", "-H", "com.example:owner,note", "tank/b"]);
    assert_eq!(
        g.ok(),
        "tank/b\tcom.example:owner\tbob\tlocal\ntank/b\tnote\thello world\tlocal\n"
    );
    env.run(["set", "note=", "tank/b"]).ok();
    assert_eq!(
        env.run(["get", "-H", "note", "tank/b"]).ok(),
        "tank/b\tnote\t-\t-\n"
    );
    env.run(["set", "volsize=20M", "tank/a"]).ok();
    assert_eq!(
        env.run(["get", "-Hp", "volsize", "tank/a"]).ok(),
        "tank/a\tvolsize\t20971520\t-\n"
    );
    env.run(["set", "used=1", "tank/a"]).fails_with("read-only");
    env.run(["set", "volsize=1M", "tank/a"])
        .fails_with("--shrink");

    env.run(["destroy", "tank/a"]).ok();
    let names: Vec<String> = env
        .run(["list", "--json"])
        .json()
        .as_array()
        .expect("array")
        .iter()
        .map(|d| d["name"].as_str().expect("name").to_string())
        .collect();
    assert_eq!(names, ["pond/c", "tank/b"]);
}

#[test]
fn vol_resize_grow_and_shrink() {
    let env = Env::new();
    env.pool("tank", "64M");
    let data = random_bytes(2 << 20, 8);
    env.import("tank/v", &data);
    env.run(["vol", "resize", "tank/v", "--size", "6M"]).ok();
    let back = env.export("tank/v");
    assert_eq!(back.len(), 6 << 20);
    same_bytes(&back[..(2 << 20)], &data, "data after growing");
    assert!(back[(2 << 20)..].iter().all(|&b| b == 0));

    env.run(["vol", "resize", "tank/v", "--size", "1M"])
        .fails_with("--shrink");
    assert_eq!(
        env.export("tank/v").len(),
        6 << 20,
        "refused shrink changed nothing"
    );
    env.run(["vol", "resize", "tank/v", "--size", "1M", "--shrink"])
        .ok();
    let back = env.export("tank/v");
    same_bytes(&back, &data[..(1 << 20)], "data after shrinking");
}

/// `vol create --thick` and `set refreservation=`: shown as built-in properties, refused
/// where the pool cannot hold them or on a snapshot, and a thin volume cannot take the space.
#[test]
fn thick_volumes_hold_their_space() {
    let env = Env::new();
    env.pool("tank", "128M");
    env.run(["vol", "create", "tank/vm", "-s", "32M", "--thick"])
        .ok();
    let get = |prop: &str, ds: &str| {
        env.run(["get", "-H", "-p", prop, ds])
            .ok()
            .split('\t')
            .nth(2)
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(get("refreservation", "tank/vm"), (32u64 << 20).to_string());
    assert_eq!(
        get("usedbyrefreservation", "tank/vm"),
        (32u64 << 20).to_string()
    );
    env.run(["vol", "create", "tank/big", "-s", "100M", "--thick"])
        .fails_with("out of space");
    env.run(["vol", "create", "tank/thin", "-s", "200M"]).ok();
    env.import("tank/vm", &random_bytes(32 << 20, 3));
    assert_eq!(get("usedbyrefreservation", "tank/vm"), "0");
    env.import("tank/thin", &random_bytes(60 << 20, 4));
    // A snapshot would hold the 32M again: there is no room for that.
    env.run(["snapshot", "tank/vm@s"])
        .fails_with("out of space");
    env.run(["set", "refreservation=none", "tank/vm"]).ok();
    assert_eq!(get("refreservation", "tank/vm"), "none");
    env.run(["snapshot", "tank/vm@s"]).ok();
    env.run(["set", "refreservation=auto", "tank/vm@s"])
        .fails_with("only a volume");
    env.run(["set", "refreservation=8M", "tank/vm"]).ok();
    assert_eq!(get("refreservation", "tank/vm"), (8u64 << 20).to_string());
    let props = env.run(["list", "tank/vm", "--json"]).json();
    assert!(
        props[0]["props"].as_object().is_some_and(|p| p.is_empty()),
        "{props}"
    );
    assert_eq!(props[0]["refreservation"], 8u64 << 20);
}

/// An import into a thick volume may use the space reserved for it, even where the pool has
/// little left for anything else (the pre-check and a pipe's safety snapshot used to refuse).
#[test]
fn an_import_into_a_thick_volume_may_use_its_reservation() {
    let env = Env::new();
    env.pool("tank", "128M");
    env.run(["vol", "create", "tank/vm", "-s", "100M", "--thick"])
        .ok();
    let img = random_bytes(50 << 20, 8);
    env.import("tank/vm", &img);
    env.run_stdin(["vol", "import", "-", "tank/vm"], &img).ok();
    same_bytes(&env.export("tank/vm")[..img.len()], &img, "imported");
}
