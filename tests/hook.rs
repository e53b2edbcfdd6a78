//! `ckpt hook`, the OCI runtime hook: fed real state JSON on stdin, it exports a CRIU-shaped
//! checkpoint bundle (and the container's rootfs changes, from annotations or from the
//! overlay mount named in the bundle's config.json) and imports it back identically; without
//! its annotations it does nothing; errors exit 1. The sample hooks.d files are checked too.

use crate::util::*;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `ckpt hook` with `state` on stdin.
fn hook(state: &serde_json::Value) -> Output {
    hook_raw(state.to_string().as_bytes())
}

fn hook_raw(stdin: &[u8]) -> Output {
    let mut child = Command::new(ckpt_bin())
        .arg("hook")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ckpt hook");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn state(status: &str, bundle: &Path, annotations: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "id": "ctr-1234",
        "status": status,
        "pid": 0,
        "bundle": bundle,
        "annotations": annotations,
    })
}

/// A CRIU-shaped checkpoint bundle: the sample bundle plus a large sparse pages image and
/// an OCI config.json whose root is `root`.
fn make_bundle(dir: &Path, root: &str) {
    let islands = vec![
        (4 << 20, pseudo_random_bytes(1, 256 << 10)),
        (20 << 20, pseudo_random_bytes(2, 12_345)),
        ((32 << 20) - 8192, pseudo_random_bytes(3, 8192)),
    ];
    let config = serde_json::json!({"ociVersion": "1.0.2", "root": {"path": root}, "annotations": {}});
    Bundle::sample()
        .sparse("checkpoint/pages-2.img", 32 << 20, islands)
        .file("checkpoint/pagemap-2.img", pseudo_random_bytes(4, 300))
        .file("checkpoint/core-2.img", pseudo_random_bytes(5, 700))
        .file("config.json", config.to_string())
        .write(dir);
}

/// `dest` gets the root's mode and mtime of `src` (the bundle root is not an archive member),
/// and loses the digest manifest; then the trees must be identical, but for what a checkpoint
/// archive never holds: the bundle's runtime spec.
fn assert_bundle_restored(src: &Path, dest: &Path) {
    let _ = fs::remove_file(dest.join("ckpt.sha256"));
    let expected = src.with_extension("expected");
    let _ = fs::remove_dir_all(&expected);
    sh("cp", &[&"-a", &src, &expected]);
    fs::remove_file(expected.join("config.json")).unwrap();
    let md = fs::metadata(src).unwrap();
    for dir in [dest, &expected] {
        fs::set_permissions(dir, fs::Permissions::from_mode(md.mode() & 0o7777)).unwrap();
        set_mtime(dir, md.mtime(), md.mtime_nsec());
    }
    assert_trees_equal(&expected, dest);
}

/// The import hook puts CRIU's images into the new container's bundle and nothing else: the
/// new container's own files (config.json, ctr.log) are the runtime's.
fn assert_checkpoint_restored(src: &Path, new_bundle: &Path) {
    assert_trees_equal(&src.join("checkpoint"), &new_bundle.join("checkpoint"));
    for name in ["config.dump", "spec.dump", "network.status", "stats-dump"] {
        assert!(!new_bundle.join(name).exists(), "{name} was restored into the new bundle");
    }
}

/// poststop with io.ckpt.export: the archive appears (at `{id}` expanded), verifies with its
/// digests, and restores the bundle identically, by `ckpt import` and by the hook at
/// prestart with io.ckpt.import.
#[test]
fn hook_exports_checkpoint_and_imports_identically() {
    let s = scratch(FsKind::Plain).unwrap();
    let bundle = s.path("bundle");
    make_bundle(&bundle, "rootfs"); // no such dir: no rootfs changes
    let out_dir = s.path("checkpoints");
    let annotations = serde_json::json!({
        "io.ckpt.export": format!("{}/{{id}}.tar", out_dir.display()),
        "io.ckpt.digest": "sha256",
        "io.container.manager": "libpod",
    });
    let o = hook(&state("stopped", &bundle, annotations));
    assert!(o.status.success(), "{}", describe(&o));
    let archive = out_dir.join("ctr-1234.tar");
    assert!(archive.is_file(), "no archive at {}", archive.display());

    let verify = ckpt_ok(&[&"verify", &archive]);
    assert!(verify.contains("OK") && verify.contains("ckpt.sha256"), "{verify}");
    let names: Vec<String> = ckpt_ok(&[&"list", &"--json", &archive])
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(&names[..2], ["config.dump", "spec.dump"], "podman's layout puts these first");
    assert!(names.iter().any(|n| n == "checkpoint/pages-2.img"), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("rootfs-diff")), "no rootfs changes expected: {names:?}");

    let dest = s.path("restored");
    ckpt_ok(&[&"import", &archive, &dest]);
    assert_bundle_restored(&bundle, &dest);

    // The hook at prestart imports into the new container's bundle, which already holds the
    // runtime's own files: they stay as they are.
    let new_bundle = s.path("new-bundle");
    fs::create_dir(&new_bundle).unwrap();
    fs::write(new_bundle.join("config.json"), b"{\"new\": true}").unwrap();
    fs::write(new_bundle.join("ctr.log"), b"").unwrap();
    let annotations = serde_json::json!({"io.ckpt.import": archive});
    let o = hook(&state("creating", &new_bundle, annotations));
    assert!(o.status.success(), "{}", describe(&o));
    assert_checkpoint_restored(&bundle, &new_bundle);
    assert_eq!(fs::read(new_bundle.join("config.json")).unwrap(), b"{\"new\": true}");

    // Again: the images exist now, so the import refuses to replace them ...
    let pages = new_bundle.join("checkpoint/pages-1.img");
    fs::write(&pages, b"changed").unwrap();
    let annotations = serde_json::json!({"io.ckpt.import": archive});
    let o = hook(&state("created", &new_bundle, annotations));
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(stderr_of(&o).contains("io.ckpt.overwrite"), "{}", describe(&o));
    assert_eq!(fs::read(&pages).unwrap(), b"changed");
    // ... unless told to.
    let annotations = serde_json::json!({"io.ckpt.import": archive, "io.ckpt.overwrite": "true"});
    let o = hook(&state("created", &new_bundle, annotations));
    assert!(o.status.success(), "{}", describe(&o));
    assert_checkpoint_restored(&bundle, &new_bundle);
}

/// The export hook carries each podman local volume the bundle's config.json bind-mounts
/// (`…/volumes/NAME/_data`) as `volumes/NAME.tar`, as podman's export does, other bind
/// mounts not; io.ckpt.ignore-volumes=true leaves the volumes out.
#[test]
fn hook_export_carries_podman_volumes_unless_ignored() {
    let s = scratch(FsKind::Plain).unwrap();
    let bundle = s.path("bundle");
    make_bundle(&bundle, "rootfs");
    let volume = s.path("storage/volumes/vol1/_data");
    write_with_parents(&volume.join("sub/f"), b"in the volume\n");
    fs::write(volume.join("big"), pseudo_random_bytes(6, 100_000)).unwrap();
    write_with_parents(&s.path("elsewhere/_data/x"), b"a bind mount\n");
    let config_path = bundle.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&fs::read(&config_path).unwrap()).unwrap();
    config["mounts"] = serde_json::json!([
        {"destination": "/vol", "type": "bind", "source": volume},
        {"destination": "/x", "type": "bind", "source": s.path("elsewhere/_data")},
    ]);
    fs::write(&config_path, config.to_string()).unwrap();

    for (ignore, carried) in [("false", true), ("true", false)] {
        let archive = s.path(format!("ignore-{ignore}.tar"));
        let annotations = serde_json::json!({"io.ckpt.export": archive, "io.ckpt.ignore-volumes": ignore});
        let o = hook(&state("stopped", &bundle, annotations));
        assert!(o.status.success(), "{}", describe(&o));
        let listing = ckpt_ok(&[&"list", &archive]);
        assert_eq!(listing.contains("volumes/vol1.tar"), carried, "ignore-volumes={ignore}:\n{listing}");
        assert!(!listing.contains("volumes/_data") && !listing.contains("elsewhere"), "{listing}");
    }
    let (dest, restored) = (s.path("dest"), s.path("restored-volume"));
    let archive = s.path("ignore-false.tar");
    ckpt_ok(&[&"import", &"--volume", &format!("vol1={}", restored.display()), &archive, &dest]);
    assert_trees_equal(&volume, &restored);
}

/// io.ckpt.rootfs-diff names the layer's diff dir (podman unmounts the rootfs before
/// poststop): the changes go into rootfs-diff.tar and deleted.files, and an import with
/// io.ckpt.rootfs-diff restores them into the new layer, whiteouts included.
#[test]
fn hook_rootfs_diff_annotation_round_trip() {
    if !require_root("whiteouts (mknod)") {
        return;
    }
    let s = scratch(FsKind::Plain).unwrap();
    let bundle = s.path("bundle");
    make_bundle(&bundle, "/nonexistent-ckpt-rootfs");
    let upper = s.path("upper");
    fs::create_dir_all(upper.join("etc")).unwrap();
    fs::create_dir_all(upper.join("var/lib/app")).unwrap();
    fs::write(upper.join("etc/new.conf"), b"added\n").unwrap();
    fs::write(upper.join("var/lib/app/state.db"), pseudo_random_bytes(6, 3 << 20)).unwrap();
    mknod_whiteout(&upper.join("etc/old.conf"));
    let archive = s.path("out.tar");
    let annotations = serde_json::json!({
        "io.ckpt.export": archive,
        "io.ckpt.rootfs-diff": upper,
    });
    let o = hook(&state("stopped", &bundle, annotations));
    assert!(o.status.success(), "{}", describe(&o));

    let listing = ckpt_ok(&[&"list", &"--nested", &archive]);
    assert!(listing.contains(" rootfs-diff.tar/") && listing.contains("state.db"), "{listing}");
    assert!(listing.lines().any(|l| l.ends_with(" deleted.files")), "{listing}");
    let db = listing.lines().find(|l| l.contains("state.db")).unwrap();
    assert!(db.contains(" aligned "), "{db}");
    ckpt_ok(&[&"verify", &archive]);

    let new_bundle = s.path("new-bundle");
    let new_upper = s.path("new-upper");
    fs::create_dir_all(&new_bundle).unwrap();
    fs::create_dir_all(&new_upper).unwrap();
    let annotations = serde_json::json!({"io.ckpt.import": archive, "io.ckpt.rootfs-diff": new_upper});
    let o = hook(&state("creating", &new_bundle, annotations));
    assert!(o.status.success(), "{}", describe(&o));
    assert_same_bytes(&upper.join("var/lib/app/state.db"), &new_upper.join("var/lib/app/state.db"));
    assert_eq!(fs::read(new_upper.join("etc/new.conf")).unwrap(), b"added\n");
    assert!(is_whiteout(&new_upper.join("etc/old.conf")), "the deletion is not a whiteout again");
    assert!(!new_bundle.join("rootfs-diff.tar").exists(), "rootfs-diff.tar went into the bundle");
    assert_checkpoint_restored(&bundle, &new_bundle);
}

/// Without rootfs annotations, the hook reads root.path from the bundle's config.json and,
/// when it is an overlay mount, archives its upper dir; importing into a container whose
/// rootfs is a fresh overlay over the same lower dir gives the same merged view.
#[test]
fn hook_finds_overlay_rootfs_in_config_json() {
    if !require_root("overlay mounts") {
        return;
    }
    let s = scratch(FsKind::Plain).unwrap();
    let lower = s.path("lower");
    fs::create_dir_all(lower.join("etc")).unwrap();
    fs::create_dir_all(lower.join("usr/bin")).unwrap();
    fs::write(lower.join("etc/keep"), b"kept\n").unwrap();
    fs::write(lower.join("etc/old.conf"), b"old\n").unwrap();
    fs::write(lower.join("usr/bin/tool"), pseudo_random_bytes(7, 9000)).unwrap();

    let merged = s.path("c1/merged");
    let _m1 = Mount::overlay(std::slice::from_ref(&lower), &s.path("c1/upper"), &s.path("c1/work"), &merged);
    fs::write(merged.join("etc/new.conf"), pseudo_random_bytes(8, 10_000)).unwrap();
    fs::remove_file(merged.join("etc/old.conf")).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(merged.join("usr/bin/tool"))
        .unwrap()
        .write_all(b"patched")
        .unwrap();

    let bundle = s.path("bundle");
    make_bundle(&bundle, merged.to_str().unwrap());
    let archive = s.path("out.tar");
    let o = hook(&state("stopped", &bundle, serde_json::json!({"io.ckpt.export": archive})));
    assert!(o.status.success(), "{}", describe(&o));
    let listing = ckpt_ok(&[&"list", &"--nested", &archive]);
    assert!(listing.contains("rootfs-diff.tar/") && listing.contains("new.conf"), "{listing}");
    assert!(listing.contains("tool"), "{listing}");
    let tar_out = Command::new("tar").arg("-xOf").arg(&archive).arg("deleted.files").output().unwrap();
    let deleted = String::from_utf8_lossy(&tar_out.stdout);
    assert!(deleted.contains("/etc/old.conf"), "deleted.files: {deleted}");

    // A new container over the same image.
    let merged2 = s.path("c2/merged");
    let _m2 = Mount::overlay(std::slice::from_ref(&lower), &s.path("c2/upper"), &s.path("c2/work"), &merged2);
    let new_bundle = s.path("new-bundle");
    fs::create_dir_all(&new_bundle).unwrap();
    let annotations = serde_json::json!({
        "io.ckpt.import": archive,
        "io.ckpt.rootfs": merged2,
    });
    let o = hook(&state("creating", &new_bundle, annotations));
    assert!(o.status.success(), "{}", describe(&o));
    assert_same_bytes(&merged.join("etc/new.conf"), &merged2.join("etc/new.conf"));
    assert_same_bytes(&merged.join("usr/bin/tool"), &merged2.join("usr/bin/tool"));
    assert!(!merged2.join("etc/old.conf").exists(), "the deleted file is back");
    assert_eq!(fs::read(merged2.join("etc/keep")).unwrap(), b"kept\n");
}

/// No annotation, another stage's annotation, a stopped container without a checkpoint:
/// nothing happens, exit 0.
#[test]
fn hook_does_nothing_unless_asked() {
    let s = scratch(FsKind::Plain).unwrap();
    let bundle = s.path("bundle");
    make_bundle(&bundle, "rootfs");
    let archive = s.path("out.tar");
    let cases = [
        state("stopped", &bundle, serde_json::json!({"io.container.manager": "libpod"})),
        state("stopped", &bundle, serde_json::Value::Null),
        state("running", &bundle, serde_json::json!({"io.ckpt.export": archive})),
        state("creating", &bundle, serde_json::json!({"io.ckpt.export": archive})),
        state("stopped", &bundle, serde_json::json!({"io.ckpt.import": archive})),
    ];
    for st in &cases {
        let o = hook(st);
        assert!(o.status.success(), "{st}: {}", describe(&o));
        assert!(o.stdout.is_empty(), "{st}: {}", describe(&o));
        assert!(!archive.exists(), "{st}: an archive was written");
    }
    // A container that stopped without being checkpointed.
    let plain = s.path("plain-bundle");
    fs::create_dir_all(&plain).unwrap();
    fs::write(plain.join("config.json"), "{}").unwrap();
    let o = hook(&state("stopped", &plain, serde_json::json!({"io.ckpt.export": archive})));
    assert!(o.status.success(), "{}", describe(&o));
    assert!(!archive.exists());
    // The state without annotations at all.
    let o = hook_raw(
        format!(
            r#"{{"ociVersion":"1.0.2","id":"x","status":"stopped","pid":1,"bundle":"{}"}}"#,
            bundle.display()
        )
        .as_bytes(),
    );
    assert!(o.status.success(), "{}", describe(&o));
}

/// Errors exit 1 with the message on stderr.
#[test]
fn hook_errors_exit_1() {
    let s = scratch(FsKind::Plain).unwrap();
    let bundle = s.path("bundle");
    make_bundle(&bundle, "rootfs");
    let archive = s.path("out.tar");
    let bad: &[(&[u8], &str)] = &[(b"not json", "JSON"), (br#"{"id":"x","status":"stopped"}"#, "bundle")];
    for (input, expect) in bad {
        let o = hook_raw(input);
        assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
        assert!(stderr_of(&o).starts_with("ckpt: ") && stderr_of(&o).contains(expect), "{}", describe(&o));
    }
    let cases = [
        (state("stopped", &bundle, serde_json::json!({"io.ckpt.export": "relative.tar"})), "absolute"),
        (
            state(
                "stopped",
                &bundle,
                serde_json::json!({"io.ckpt.export": archive, "io.ckpt.compress": "lz4"}),
            ),
            "io.ckpt.compress",
        ),
        (
            state(
                "stopped",
                &bundle,
                serde_json::json!({"io.ckpt.export": archive, "io.ckpt.digest": "md5"}),
            ),
            "io.ckpt.digest",
        ),
        (
            state(
                "stopped",
                &bundle,
                serde_json::json!({"io.ckpt.export": archive, "io.ckpt.rootfs-diff": "/nonexistent-ckpt-upper"}),
            ),
            "/nonexistent-ckpt-upper",
        ),
        (
            state("creating", &bundle, serde_json::json!({"io.ckpt.import": "/nonexistent-ckpt.tar"})),
            "/nonexistent-ckpt.tar",
        ),
    ];
    for (st, expect) in &cases {
        let o = hook(st);
        assert_eq!(o.status.code(), Some(1), "{st}: {}", describe(&o));
        assert!(stderr_of(&o).contains(expect), "{st}: {}", describe(&o));
        assert!(!archive.exists(), "{st}: a failed export left an archive");
    }
}

/// The sample hooks.d files follow the OCI hooks 1.0.0 schema podman and CRI-O read, run
/// `ckpt hook` at the stages the hook acts in, and match exactly their annotation.
#[test]
fn sample_hooks_d_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hooks");
    let expected = [
        ("ckpt-export.json", "io.ckpt.export", "poststop"),
        ("ckpt-import.json", "io.ckpt.import", "prestart"),
    ];
    for (file, annotation, stage) in expected {
        let text = fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(v["version"], "1.0.0", "{file}");
        let path = v["hook"]["path"].as_str().unwrap();
        assert!(path.starts_with('/') && path.ends_with("/ckpt"), "{file}: hook.path {path}");
        assert_eq!(v["hook"]["args"], serde_json::json!(["ckpt", "hook"]), "{file}");
        assert_eq!(v["stages"], serde_json::json!([stage]), "{file}");
        let when = v["when"]["annotations"].as_object().unwrap();
        assert_eq!(when.len(), 1, "{file}");
        let (key, value) = when.iter().next().unwrap();
        let value = value.as_str().unwrap();
        // The hooks library matches with Go regexps; Python's agree on these simple ones.
        let check = format!(
            "import re,sys\nk,v={key:?},{value:?}\n\
             assert re.search(k,'{annotation}') and re.search(v,'/x.tar')\n\
             for other in ['io.ckpt.exports','xio.ckpt.export','io.ckpt.bundle','io_ckpt_export']:\n    assert not re.search(k,other), other\n\
             assert not re.fullmatch(v,'')\n"
        );
        sh("python3", &[&"-c", &check]);
    }
}
