//! `ckpt push` and `ckpt pull` against a real registry (Debian's docker-registry, the CNCF
//! distribution registry, on 127.0.0.1 with filesystem storage in a temp dir) and against
//! OCI image layouts; skopeo as an independent reader.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const HTPASSWD_BIN: &str = "/usr/bin/htpasswd";

/// A registry on a free port of 127.0.0.1, killed (and its storage removed) on drop.
struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    /// None (the test skips) when docker-registry is not installed, except under CI.
    fn start() -> Option<Registry> {
        Registry::start_with(None)
    }

    /// A registry that accepts only `user`/`password` (htpasswd, bcrypt); None (skip) when
    /// docker-registry or htpasswd (apache2-utils) is missing, except under CI.
    fn start_with_user(user: &str, password: &str) -> Option<Registry> {
        Registry::start_with(Some((user, password)))
    }

    fn start_with(user: Option<(&str, &str)>) -> Option<Registry> {
        if !skip_unless(Path::new(REGISTRY_BIN).is_file(), "docker-registry is not installed") {
            return None;
        }
        if user.is_some() && !skip_unless(Path::new(HTPASSWD_BIN).is_file(), "htpasswd is not installed") {
            return None;
        }
        let dir = tempfile::tempdir_in(test_base_dir()).unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = dir.path().join("config.yml");
        let storage = dir.path().join("storage");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if let Some((name, password)) = user {
            let htpasswd = dir.path().join("htpasswd");
            fs::write(&htpasswd, sh(HTPASSWD_BIN, &[&"-Bbn", &name, &password])).unwrap();
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: ckpt-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        fs::write(&config, yaml).unwrap();
        // The registry writes its access log (combined format) to stdout.
        let log = fs::File::create(dir.path().join("access.log")).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {REGISTRY_BIN}: {e}"));
        let registry = Registry { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen on 127.0.0.1:{port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(registry)
    }

    fn reference(&self, repo_tag: &str) -> String {
        format!("127.0.0.1:{}/{repo_tag}", self.port)
    }

    /// The registry's blob files (`.../blobs/sha256/XX/HEX/data`) and their total size.
    fn blobs(&self) -> (usize, u64) {
        let root = self.dir.path().join("storage/docker/registry/v2/blobs");
        let mut count = 0;
        let mut bytes = 0;
        for entry in walkdir::WalkDir::new(&root).into_iter().flatten() {
            if entry.file_type().is_file() && entry.file_name() == "data" {
                count += 1;
                bytes += entry.metadata().unwrap().len();
            }
        }
        (count, bytes)
    }

    /// The requests the registry has answered so far, from its access log.
    fn requests(&self) -> Vec<Request> {
        let log = fs::read_to_string(self.dir.path().join("access.log")).unwrap();
        log.lines().filter_map(Request::parse).collect()
    }

    /// Waits until the access log and the storage have not changed for 300 ms (at most 10 s).
    fn settle(&self) {
        let state = || (self.requests().len(), self.blobs());
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = state();
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = state();
            if now == last || Instant::now() > deadline {
                return;
            }
            last = now;
        }
    }

    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir.path().join(format!("storage/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}

/// One line of the registry's access log: `HOST - USER [TIME] "METHOD PATH HTTP/1.1" STATUS
/// BYTES "REFERER" "AGENT"`; BYTES is what the registry sent.
#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    status: u16,
    bytes_sent: u64,
}

impl Request {
    fn parse(line: &str) -> Option<Request> {
        let mut quoted = line.split('"');
        let mut request = quoted.nth(1)?.split(' ');
        let (method, path) = (request.next()?.to_string(), request.next()?.to_string());
        let mut after = quoted.next()?.split_whitespace();
        let status = after.next()?.parse().ok()?;
        let bytes_sent = after.next()?.parse().unwrap_or(0);
        Some(Request { method, path, status, bytes_sent })
    }

    /// A blob upload's final PUT (`.../blobs/uploads/ID?digest=sha256:...`) that stored the
    /// blob: its digest.
    fn uploaded_digest(&self) -> Option<String> {
        if self.method != "PUT" || self.status != 201 || !self.path.contains("/blobs/uploads/") {
            return None;
        }
        let digest = self.path.split_once("digest=")?.1.split('&').next()?;
        Some(digest.replace("%3A", ":").replace("%3a", ":"))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const MIB: usize = 1 << 20;

/// The sample bundle with two large CRIU page images (one sparse) beside its small files.
fn bundle(dir: &Path, seed: u64) -> PathBuf {
    let path = dir.join(format!("bundle-{seed}"));
    Bundle::sample()
        .file("checkpoint/pages-2.img", pseudo_random_bytes(seed, 3 * MIB))
        .file("checkpoint/pages-3.img", pseudo_random_bytes(1000, 2 * MIB))
        .sparse("checkpoint/pages-4.img", 8 * MIB as u64, vec![(4096, pseudo_random_bytes(7, 8192))])
        .write(&path);
    // A checkpoint's unchanged files keep their mtime; the helper writes them anew.
    for rel in ["checkpoint/pages-3.img", "checkpoint/pages-4.img"] {
        set_mtime(&path.join(rel), 1_700_000_000, 5);
    }
    path
}

/// What `ckpt import` of `ckpt export --bundle SRC` gives: the tree a pulled image must equal
/// (the archive has no `./`, so the root's own metadata is the importer's).
fn expected_tree(src: &Path) -> PathBuf {
    let archive = src.with_extension("expected.tar");
    let tree = src.with_extension("expected");
    ckpt_ok(&[&"export", &"--bundle", &src, &archive]);
    ckpt_ok(&[&"import", &archive, &tree]);
    tree
}

/// Compares `dest` with the tree the bundle `src` exports to, the root's mtime and mode
/// aside (the importer's: podman's image root is 0555).
fn assert_same_checkpoint(src: &Path, dest: &Path) {
    let expected = expected_tree(src);
    let root = fs::metadata(dest).unwrap();
    fs::File::open(&expected).unwrap().set_modified(root.modified().unwrap()).unwrap();
    fs::set_permissions(&expected, root.permissions()).unwrap();
    assert_trees_equal(&expected, dest);
}

fn push_json(src: &Path, reference: &str, store: &Path) -> serde_json::Value {
    ckpt_json(&[&"push", &"--json", &"--tls-verify=false", &"--store", &store, &src, &reference])
}

fn pull_json(reference: &str, store: &Path, out: &[Arg]) -> serde_json::Value {
    let mut args: Vec<Arg> = vec![&"pull", &"--json", &"--tls-verify=false", &"--store", &store, &reference];
    args.extend_from_slice(out);
    ckpt_json(&args)
}

fn layer_digests(manifest: &serde_json::Value) -> Vec<String> {
    manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect()
}

#[test]
fn push_then_pull_on_another_host_then_import_gives_the_same_tree() {
    let Some(registry) = Registry::start() else { return };
    let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
    let src = bundle(tmp.path(), 1);
    let archive = tmp.path().join("src.tar");
    ckpt_ok(&[&"export", &"--bundle", &src, &archive]);
    let reference = registry.reference("ckpt/app:cp1");
    let pushed = push_json(&archive, &reference, &tmp.path().join("store-a"));
    assert_eq!(json_u64(&pushed, "blobs_skipped"), 0);
    // A fresh store: nothing is shared with the pushing side.
    let dest = tmp.path().join("dest");
    let pulled = pull_json(&reference, &tmp.path().join("store-b"), &[&"--import", &dest]);
    assert_eq!(pulled["digest"], pushed["digest"]);
    assert_same_checkpoint(&src, &dest);
}

#[test]
fn pull_writes_a_0600_archive_that_imports_to_the_same_tree() {
    let Some(registry) = Registry::start() else { return };
    let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
    let src = bundle(tmp.path(), 2);
    let reference = registry.reference("ckpt/app:cp1");
    push_json(&src, &reference, &tmp.path().join("store-a"));
    let out = tmp.path().join("pulled.tar");
    pull_json(&reference, &tmp.path().join("store-b"), &[&out]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    let verify = ckpt_json(&[&"verify", &"--json", &out]);
    assert_eq!(verify["ok"], true, "{verify}");
    let dest = tmp.path().join("dest");
    ckpt_ok(&[&"import", &out, &dest]);
    assert_same_checkpoint(&src, &dest);
}

#[test]
fn an_oci_layout_round_trip_gives_the_same_tree_and_skopeo_reads_the_layout() {
    let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
    let src = bundle(tmp.path(), 3);
    let layout = tmp.path().join("layout");
    let reference = format!("oci:{}:cp1", layout.display());
    let pushed = ckpt_json(&[&"push", &"--json", &"--store", &tmp.path().join("store-a"), &src, &reference]);
    for name in ["oci-layout", "index.json"] {
        assert!(layout.join(name).is_file(), "{name} missing");
    }
    let dest = tmp.path().join("dest");
    ckpt_ok(&[&"pull", &"--store", &tmp.path().join("store-b"), &reference, &"--import", &dest]);
    assert_same_checkpoint(&src, &dest);
    if have("skopeo") {
        let raw = parse_json(&sh("skopeo", &[&"inspect", &"--raw", &reference]));
        let digest = format!("sha256:{}", sha256_hex(&serde_json::to_vec(&raw).unwrap()));
        assert_eq!(raw["annotations"]["org.criu.checkpoint.container.name"], "sample-sleeper");
        // skopeo's re-serialization may differ in bytes; the layers are what must match.
        assert_eq!(layer_digests(&raw).len(), 4, "{digest}: {raw}");
        assert!(pushed["digest"].as_str().unwrap().starts_with("sha256:"));
    }
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn skopeo_inspect_shows_the_checkpoint_annotations_podman_cri_o_and_criu_read() {
    let Some(registry) = Registry::start() else { return };
    if !have("skopeo") {
        return;
    }
    let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
    let src = bundle(tmp.path(), 4);
    let reference = registry.reference("ckpt/app:cp1");
    push_json(&src, &reference, &tmp.path().join("store"));
    let raw = parse_json(&sh(
        "skopeo",
        &[&"inspect", &"--raw", &"--tls-verify=false", &format!("docker://{reference}")],
    ));
    let annotations = &raw["annotations"];
    for key in [
        "io.podman.annotations.checkpoint.name",
        "io.kubernetes.cri-o.annotations.checkpoint.name",
        "org.criu.checkpoint.container.name",
    ] {
        assert_eq!(annotations[key], "sample-sleeper", "{key}: {raw}");
    }
    assert_eq!(annotations["io.podman.annotations.checkpoint.runtime.name"], "crun", "{raw}");
    assert_eq!(
        annotations["io.podman.annotations.checkpoint.rootfsImageName"],
        "docker.io/library/alpine:3.20"
    );
    assert_eq!(annotations["org.criu.checkpoint.engine.name"], "podman");
    // One layer per large file (pages-2, -3, -4), then the small files.
    assert_eq!(layer_digests(&raw).len(), 4, "{raw}");
}

#[test]
fn a_second_push_after_one_large_file_changed_uploads_only_its_layer_and_the_small_files_layer() {
    let Some(registry) = Registry::start() else { return };
    let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
    let store = tmp.path().join("store");
    let first = bundle(tmp.path(), 5);
    let reference = registry.reference("ckpt/app:cp1");
    push_json(&first, &reference, &store);
    let (blobs_before, bytes_before) = registry.blobs();
    // The same container's next checkpoint: pages-2.img changed, the rest did not.
    let second = bundle(tmp.path(), 6);
    let stats = push_json(&second, &registry.reference("ckpt/app:cp2"), &store);
    let (blobs_after, bytes_after) = registry.blobs();
    // The registry keeps manifests as blobs too.
    assert_eq!(
        blobs_after - blobs_before,
        4,
        "the changed layer, the small-files layer, the config, the manifest"
    );
    let added = bytes_after - bytes_before;
    assert!(added < 3 * MIB as u64 + 256 * 1024, "{added} bytes added to the registry");
    assert!(added >= 3 * MIB as u64, "{added} bytes added to the registry");
    assert_eq!(json_u64(&stats, "blobs_skipped"), 2, "{stats}");
    let uploaded = json_u64(&stats, "bytes_uploaded");
    assert!(
        uploaded < added && added - uploaded < 4096,
        "{uploaded} uploaded, {added} added: the rest is the manifest"
    );

    // The second pull into the first pull's store downloads the same two layers only.
    let pull_store = tmp.path().join("pull-store");
    pull_json(&reference, &pull_store, &[&tmp.path().join("one.tar")]);
    let pulled = pull_json(&registry.reference("ckpt/app:cp2"), &pull_store, &[&tmp.path().join("two.tar")]);
    assert_eq!(json_u64(&pulled, "blobs_downloaded"), 2, "{pulled}");
    assert_eq!(json_u64(&pulled, "blobs_reused"), 2, "{pulled}");
    let dest = tmp.path().join("dest");
    ckpt_ok(&[&"import", &tmp.path().join("two.tar"), &dest]);
    assert_same_checkpoint(&second, &dest);
}

#[test]
fn a_tampered_blob_in_the_registry_fails_the_pull_naming_it_and_leaves_no_out() {
    let Some(registry) = Registry::start() else { return };
    let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
    let src = bundle(tmp.path(), 7);
    let reference = registry.reference("ckpt/app:cp1");
    push_json(&src, &reference, &tmp.path().join("store-a"));
    let manifest = parse_json(&sh(
        "skopeo",
        &[&"inspect", &"--raw", &"--tls-verify=false", &format!("docker://{reference}")],
    ));
    let victim = layer_digests(&manifest)[0].clone();
    let file = registry.blob_file(&victim);
    let mut data = fs::read(&file).unwrap();
    data[10_000] ^= 0x40;
    fs::write(&file, &data).unwrap();
    let out = tmp.path().join("out.tar");
    let store = tmp.path().join("store-b");
    let failed = ckpt_code(1, &[&"pull", &"--tls-verify=false", &"--store", &store, &reference, &out]);
    let stderr = stderr_of(&failed);
    assert!(
        stderr.contains(&reference) && stderr.contains(&victim) && stderr.contains("digest mismatch"),
        "{stderr}"
    );
    assert!(!out.exists(), "a partial OUT was left");
    assert!(!store.join("blobs/sha256").join(victim.strip_prefix("sha256:").unwrap()).exists());
    assert_eq!(
        fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("out.tar"))
            .count(),
        0
    );
    let dest = tmp.path().join("dest");
    ckpt_code(1, &[&"pull", &"--tls-verify=false", &"--store", &store, &reference, &"--import", &dest]);
    assert!(!dest.exists(), "DEST was created");
}

#[test]
fn a_tampered_blob_in_an_oci_layout_fails_the_pull_and_leaves_nothing_under_dest() {
    let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
    let src = bundle(tmp.path(), 8);
    let layout = tmp.path().join("layout");
    let reference = format!("oci:{}:cp1", layout.display());
    ckpt_ok(&[&"push", &"--store", &tmp.path().join("store-a"), &src, &reference]);
    let index = parse_json(&fs::read_to_string(layout.join("index.json")).unwrap());
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap().to_string();
    let blob = |d: &str| layout.join("blobs/sha256").join(d.strip_prefix("sha256:").unwrap());
    let manifest = parse_json(&fs::read_to_string(blob(&manifest_digest)).unwrap());
    let victim = layer_digests(&manifest).last().unwrap().clone();
    let mut data = fs::read(blob(&victim)).unwrap();
    let last = data.len() - 1;
    data[last] ^= 1;
    fs::write(blob(&victim), &data).unwrap();
    let dest = tmp.path().join("dest");
    let failed =
        ckpt_code(1, &[&"pull", &"--store", &tmp.path().join("store-b"), &reference, &"--import", &dest]);
    let stderr = stderr_of(&failed);
    assert!(stderr.contains(&victim) && stderr.contains("digest mismatch"), "{stderr}");
    assert!(!dest.exists(), "DEST was created");
}

#[test]
fn a_pull_from_a_registry_that_is_down_fails_naming_the_reference() {
    let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let reference = format!("127.0.0.1:{port}/ckpt/app:cp1");
    let out = tmp.path().join("out.tar");
    let failed =
        ckpt_code(1, &[&"pull", &"--tls-verify=false", &"--store", &tmp.path().join("s"), &reference, &out]);
    let stderr = stderr_of(&failed);
    assert!(stderr.contains(&reference) && stderr.contains("connect"), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn a_reference_without_a_registry_host_is_a_usage_error() {
    let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
    let failed =
        ckpt_code(2, &[&"pull", &"--store", &tmp.path().join("s"), &"app:latest", &tmp.path().join("o")]);
    assert!(stderr_of(&failed).contains("\"app:latest\""), "{}", stderr_of(&failed));
}

const USER: &str = "ckpt-user";
const PASSWORD: &str = "s3cret pass";

/// Entries of `dir` whose name contains `name`: a failed pull must leave none (no OUT, no
/// temporary beside it).
fn entries_named(dir: &Path, name: &str) -> usize {
    fs::read_dir(dir).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains(name)).count()
}

#[test]
fn push_and_pull_with_the_right_creds_against_an_htpasswd_registry_give_the_same_tree() {
    let Some(registry) = Registry::start_with_user(USER, PASSWORD) else { return };
    let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
    let src = bundle(tmp.path(), 11);
    let reference = registry.reference("ckpt/app:cp1");
    let creds = format!("{USER}:{PASSWORD}");
    ckpt_ok(&[
        &"push",
        &"--tls-verify=false",
        &"--creds",
        &creds,
        &"--store",
        &tmp.path().join("a"),
        &src,
        &reference,
    ]);
    assert!(registry.blobs().0 >= 4, "nothing reached the registry");
    let dest = tmp.path().join("dest");
    ckpt_ok(&[
        &"pull",
        &"--tls-verify=false",
        &"--creds",
        &creds,
        &"--store",
        &tmp.path().join("b"),
        &reference,
        &"--import",
        &dest,
    ]);
    assert_same_checkpoint(&src, &dest);
}

#[test]
fn a_wrong_password_fails_push_and_pull_with_exit_1_naming_the_reference_and_leaves_no_out() {
    let Some(registry) = Registry::start_with_user(USER, PASSWORD) else { return };
    let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
    let src = bundle(tmp.path(), 12);
    let reference = registry.reference("ckpt/app:cp1");
    let wrong = format!("{USER}:not-{PASSWORD}");
    let failed = ckpt_code(
        1,
        &[
            &"push",
            &"--tls-verify=false",
            &"--creds",
            &wrong,
            &"--store",
            &tmp.path().join("a"),
            &src,
            &reference,
        ],
    );
    let stderr = stderr_of(&failed);
    assert!(
        stderr.contains(&reference) && stderr.contains("authenticate") && stderr.contains("401"),
        "{stderr}"
    );
    assert_eq!(registry.blobs().0, 0, "a refused push stored blobs");

    // Something to pull, pushed with the right password.
    ckpt_ok(&[
        &"push",
        &"--tls-verify=false",
        &"--creds",
        &format!("{USER}:{PASSWORD}"),
        &"--store",
        &tmp.path().join("a"),
        &src,
        &reference,
    ]);
    let out = tmp.path().join("out.tar");
    let store = tmp.path().join("b");
    let failed = ckpt_code(
        1,
        &[&"pull", &"--tls-verify=false", &"--creds", &wrong, &"--store", &store, &reference, &out],
    );
    let stderr = stderr_of(&failed);
    assert!(
        stderr.contains(&reference) && stderr.contains("authenticate") && stderr.contains("401"),
        "{stderr}"
    );
    assert_eq!(entries_named(tmp.path(), "out.tar"), 0, "a refused pull left OUT or its temporary");
    let dest = tmp.path().join("dest");
    let failed = ckpt_code(
        1,
        &[
            &"pull",
            &"--tls-verify=false",
            &"--creds",
            &wrong,
            &"--store",
            &store,
            &reference,
            &"--import",
            &dest,
        ],
    );
    assert!(stderr_of(&failed).contains(&reference), "{}", stderr_of(&failed));
    assert!(!dest.exists(), "a refused pull created DEST");
}

#[test]
fn an_authfile_in_podmans_format_authenticates_push_and_pull() {
    use base64::Engine;
    let Some(registry) = Registry::start_with_user(USER, PASSWORD) else { return };
    let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
    let src = bundle(tmp.path(), 13);
    let reference = registry.reference("ckpt/app:cp1");
    let host = format!("127.0.0.1:{}", registry.port);
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let authfile = tmp.path().join("auth.json");
    fs::write(&authfile, serde_json::json!({ "auths": { host: { "auth": auth } } }).to_string()).unwrap();
    ckpt_ok(&[
        &"push",
        &"--tls-verify=false",
        &"--authfile",
        &authfile,
        &"--store",
        &tmp.path().join("a"),
        &src,
        &reference,
    ]);
    let out = tmp.path().join("out.tar");
    ckpt_ok(&[
        &"pull",
        &"--tls-verify=false",
        &"--authfile",
        &authfile,
        &"--store",
        &tmp.path().join("b"),
        &reference,
        &out,
    ]);
    let dest = tmp.path().join("dest");
    ckpt_ok(&[&"import", &out, &dest]);
    assert_same_checkpoint(&src, &dest);
}

#[test]
fn podman_pull_of_a_pushed_checkpoint_shows_its_checkpoint_annotations_and_its_tree() {
    let Some(s) = scratch(FsKind::Plain) else { return };
    let Some(pm) = Podman::new(&s) else { return };
    let Some(registry) = Registry::start() else { return };
    let src = bundle(&s.path(""), 14);
    let reference = registry.reference("ckpt/app:cp1");
    let pushed = push_json(&src, &reference, &s.path("store"));
    pm.ok(&[&"pull", &"-q", &"--tls-verify=false", &reference]);
    let inspected: serde_json::Value = serde_json::from_str(&pm.ok(&[&"image", &"inspect", &reference]))
        .expect("podman image inspect: JSON");
    let image = &inspected[0];
    let digest = pushed["digest"].as_str().unwrap();
    assert_eq!(image["Digest"], digest, "{image}");
    // The keys podman reads back from its own store to treat the image as a checkpoint.
    let annotations = &image["Annotations"];
    assert_eq!(annotations["io.podman.annotations.checkpoint.name"], "sample-sleeper", "{image}");
    assert_eq!(annotations["io.podman.annotations.checkpoint.runtime.name"], "crun", "{image}");
    assert_eq!(annotations["io.kubernetes.cri-o.annotations.checkpoint.name"], "sample-sleeper");
    assert_eq!(annotations["org.criu.checkpoint.container.name"], "sample-sleeper");
    assert_eq!(image["RootFS"]["Layers"].as_array().unwrap().len(), 4, "{image}");
    // podman's own union of the layers is the checkpoint's tree.
    let merged = PathBuf::from(pm.ok(&[&"image", &"mount", &reference]));
    assert_same_checkpoint(&src, &merged);
    pm.ok(&[&"image", &"unmount", &reference]);
}

/// A bundle whose large files are `count` page images of `mib` MiB each (seeded by `seed`),
/// so that a push or pull takes long enough to be killed in the middle.
fn large_bundle(dir: &Path, seed: u64, count: usize, mib: usize) -> PathBuf {
    let path = dir.join(format!("large-{seed}"));
    let mut bundle = Bundle::sample();
    for n in 0..count {
        bundle = bundle.file(
            &format!("checkpoint/pages-{}.img", n + 2),
            pseudo_random_bytes(seed + n as u64, mib * MIB),
        );
    }
    bundle.write(&path);
    path
}

/// Starts `ckpt ARGS` in the background (its output discarded).
fn spawn_ckpt(args: &[Arg]) -> std::process::Child {
    Command::new(ckpt_bin())
        .args(args.iter().map(|a| a.as_ref()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start ckpt {}: {e}", show_args(args)))
}

/// Every regular file below `dir`, by path.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().to_path_buf())
        .collect()
}

#[test]
fn a_push_into_an_oci_layout_writes_every_file_0600_and_no_temporary_names() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
    let src = bundle(tmp.path(), 21);
    let layout = tmp.path().join("layout");
    ckpt_ok(&[
        &"push",
        &"--store",
        &tmp.path().join("store"),
        &src,
        &format!("oci:{}:cp1", layout.display()),
    ]);
    let files = files_below(&layout);
    assert_eq!(files.len(), 2 + 4 + 2, "oci-layout, index.json, 4 layers, config, manifest: {files:?}");
    for file in files.iter().chain(&files_below(&tmp.path().join("store"))) {
        let mode = fs::metadata(file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
        assert!(!file.to_string_lossy().contains(".ckpt-"), "{} left", file.display());
    }
}

#[test]
fn a_push_into_an_oci_layout_killed_midway_leaves_only_complete_blobs_and_no_index() {
    let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
    let src = large_bundle(tmp.path(), 22, 6, 16);
    let layout = tmp.path().join("layout");
    let blobs = layout.join("blobs/sha256");
    let reference = format!("oci:{}:cp1", layout.display());
    let mut child = spawn_ckpt(&[&"push", &"--store", &tmp.path().join("store"), &src, &reference]);
    let killed = kill_when(&mut child, || fs::read_dir(&blobs).is_ok_and(|d| d.count() > 0));
    assert!(killed, "the push finished before a blob was written: nothing was tested");
    assert!(!layout.join("index.json").exists(), "index.json names blobs a killed push never wrote");
    let written = files_below(&blobs);
    assert!(!written.is_empty());
    for blob in written {
        let name = blob.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(sha256_hex(&fs::read(&blob).unwrap()), name, "{} is not complete", blob.display());
    }
}

#[test]
fn a_pull_killed_midway_leaves_no_out_or_dest_and_the_next_resumes_the_partial_blob_with_a_range_request() {
    let Some(registry) = Registry::start() else { return };
    if !have("skopeo") {
        return;
    }
    let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
    let src = large_bundle(tmp.path(), 23, 1, 48);
    let reference = registry.reference("ckpt/app:cp1");
    push_json(&src, &reference, &tmp.path().join("store-a"));
    let manifest = parse_json(&sh(
        "skopeo",
        &[&"inspect", &"--raw", &"--tls-verify=false", &format!("docker://{reference}")],
    ));
    let sizes: Vec<u64> =
        manifest["layers"].as_array().unwrap().iter().map(|l| l["size"].as_u64().unwrap()).collect();
    let big = layer_digests(&manifest)[0].clone();
    let store = tmp.path().join("store-b");
    let partial = store.join("partial").join(big.strip_prefix("sha256:").unwrap());
    let out = tmp.path().join("out.tar");
    let pull: Vec<Arg> = vec![&"pull", &"--tls-verify=false", &"--store", &store, &reference, &out];
    let mut child = spawn_ckpt(&pull);
    let partial_len = || fs::metadata(&partial).map_or(0, |m| m.len());
    assert!(kill_when(&mut child, || partial_len() > 0), "the pull finished before it could be killed");
    assert_eq!(entries_named(tmp.path(), "out.tar"), 0, "a killed pull left OUT or its temporary");
    let first_kept = partial_len();
    // Killed again, resuming, with --import: no DEST, and the partial blob only grew.
    let dest = tmp.path().join("dest");
    let import: Vec<Arg> =
        vec![&"pull", &"--tls-verify=false", &"--store", &store, &reference, &"--import", &dest];
    let mut child = spawn_ckpt(&import);
    assert!(
        kill_when(&mut child, || partial_len() > first_kept),
        "the pull finished before it could be killed"
    );
    assert!(!dest.exists(), "a killed pull --import created DEST");
    let kept = partial_len();
    assert!(kept > first_kept && kept < sizes[0], "{kept} of {} bytes kept", sizes[0]);

    let mut args = pull.clone();
    args.insert(1, &"--json");
    let stats = ckpt_json(&args);
    assert_eq!(json_u64(&stats, "bytes_downloaded"), sizes[0] - kept + sizes[1], "{stats}");
    // The killed GET is logged whenever the registry sees its connection close: look at all.
    let gets: Vec<Request> =
        registry.requests().into_iter().filter(|r| r.method == "GET" && r.path.ends_with(&big)).collect();
    assert!(gets.iter().any(|r| (r.status, r.bytes_sent) == (206, sizes[0] - kept)), "{gets:?}");
    assert!(gets.iter().all(|r| r.bytes_sent < sizes[0]), "the whole blob was sent again: {gets:?}");
    ckpt_ok(&[&"import", &out, &dest]);
    assert_same_checkpoint(&src, &dest);
}

/// The digests of the blobs in the registry's storage.
fn stored_digests(registry: &Registry) -> std::collections::BTreeSet<String> {
    let root = registry.dir.path().join("storage/docker/registry/v2/blobs");
    files_below(&root)
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "data"))
        .map(|p| format!("sha256:{}", p.parent().unwrap().file_name().unwrap().to_string_lossy()))
        .collect()
}

#[test]
fn a_push_killed_midway_then_run_again_uploads_only_the_blobs_the_registry_lacks() {
    let Some(registry) = Registry::start() else { return };
    let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
    let src = large_bundle(tmp.path(), 24, 4, 12);
    let reference = registry.reference("ckpt/app:cp1");
    let store = tmp.path().join("store");
    let push: Vec<Arg> = vec![&"push", &"--tls-verify=false", &"--store", &store, &src, &reference];
    let mut child = spawn_ckpt(&push);
    assert!(kill_when(&mut child, || registry.blobs().0 > 0), "the push finished before it could be killed");
    // The registry finishes (or fails) the killed push's last request when it sees the
    // connection close, and logs it then: wait for that before looking.
    registry.settle();
    let present = stored_digests(&registry);
    let before = registry.requests().len();
    let stats = push_json(&src, &reference, &store);
    let sent: Vec<String> =
        registry.requests().iter().skip(before).filter_map(Request::uploaded_digest).collect();
    for digest in &sent {
        assert!(!present.contains(digest), "{digest} was in the registry and was uploaded again");
    }
    // Four page layers, the small files' layer and the config: what the first push had not
    // finished is sent now.
    assert_eq!(sent.len() + present.len(), 6, "sent {sent:?}, present {present:?}");
    assert_eq!(json_u64(&stats, "blobs_skipped"), present.len() as u64, "{stats}");
    assert_eq!(json_u64(&stats, "blobs_uploaded"), sent.len() as u64, "{stats}");
    let dest = tmp.path().join("dest");
    pull_json(&reference, &tmp.path().join("pull-store"), &[&"--import", &dest]);
    assert_same_checkpoint(&src, &dest);
}

#[test]
fn a_push_to_a_second_repository_mounts_every_blob_from_the_first_and_uploads_nothing() {
    let Some(registry) = Registry::start() else { return };
    let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
    let src = bundle(tmp.path(), 31);
    let store = tmp.path().join("store");
    let first = push_json(&src, &registry.reference("ckpt/one:cp1"), &store);
    assert_eq!(json_u64(&first, "blobs_mounted"), 0, "{first}");
    let before = registry.requests().len();
    let second = push_json(&src, &registry.reference("ckpt/two:cp1"), &store);
    let requests: Vec<Request> = registry.requests().into_iter().skip(before).collect();
    let uploads: Vec<&Request> =
        requests.iter().filter(|r| r.method == "PUT" || r.method == "PATCH").collect();
    assert!(uploads.iter().all(|r| r.path.contains("/manifests/")), "blob data was sent: {uploads:?}");
    let mounts =
        requests.iter().filter(|r| r.method == "POST" && r.path.contains("mount=") && r.status == 201);
    // Four layers and the config.
    assert_eq!(mounts.count(), 5, "{requests:?}");
    assert_eq!(json_u64(&second, "blobs_mounted"), 5, "{second}");
    assert_eq!(
        (json_u64(&second, "blobs_uploaded"), json_u64(&second, "bytes_uploaded")),
        (0, 0),
        "{second}"
    );
    let dest = tmp.path().join("dest");
    pull_json(&registry.reference("ckpt/two:cp1"), &tmp.path().join("pull-store"), &[&"--import", &dest]);
    assert_same_checkpoint(&src, &dest);
}

#[test]
fn a_mount_the_registry_refuses_falls_back_to_an_upload() {
    let Some(registry) = Registry::start() else { return };
    let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
    let src = bundle(tmp.path(), 32);
    let store = tmp.path().join("store");
    push_json(&src, &registry.reference("ckpt/one:cp1"), &store);
    // Repository one is gone; the store still says the blobs are there.
    fs::remove_dir_all(registry.dir.path().join("storage/docker/registry/v2/repositories/ckpt/one")).unwrap();
    let before = registry.requests().len();
    let second = push_json(&src, &registry.reference("ckpt/two:cp1"), &store);
    let requests: Vec<Request> = registry.requests().into_iter().skip(before).collect();
    let refused =
        requests.iter().filter(|r| r.method == "POST" && r.path.contains("mount=") && r.status == 202);
    assert_eq!(refused.count(), 5, "{requests:?}");
    assert_eq!(requests.iter().filter_map(Request::uploaded_digest).count(), 5, "{requests:?}");
    assert_eq!((json_u64(&second, "blobs_mounted"), json_u64(&second, "blobs_uploaded")), (0, 5), "{second}");
    let dest = tmp.path().join("dest");
    pull_json(&registry.reference("ckpt/two:cp1"), &tmp.path().join("pull-store"), &[&"--import", &dest]);
    assert_same_checkpoint(&src, &dest);
}

#[test]
fn podman_restore_of_a_pulled_checkpoint_image_continues_the_process_with_its_rootfs_changes() {
    let Some(s) = scratch_sized(FsKind::Btrfs, 2 << 30) else { return };
    let Some(pm) = Podman::new(&s) else { return };
    let Some(registry) = Registry::start() else { return };
    pm.run_counter("c1", &[]);
    pm.ok(&[&"exec", &"c1", &"/bin/sh", &"-c", &"mkdir /data && echo kept > /data/f"]);
    let at_checkpoint = pm.counter("c1");
    let archive = s.path("c1.tar");
    pm.ckpt_ok(&[&"podman", &"checkpoint", &"c1", &archive]);
    let reference = registry.reference("ckpt/c1:cp1");
    push_json(&archive, &reference, &s.path("store"));
    pm.ok(&[&"pull", &"-q", &"--tls-verify=false", &reference]);
    pm.ok(&[&"container", &"restore", &"--name", &"c2", &reference]);
    pm.assert_counter_continues("c2", at_checkpoint);
    assert_eq!(pm.ok(&[&"exec", &"c2", &"cat", &"/data/f"]), "kept");
}

#[test]
fn a_pulled_checkpoint_keeps_the_top_level_names_podmans_layout_leaves_out() {
    let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
    let src = bundle(tmp.path(), 33);
    write_with_parents(&src.join("volumes/data.tar"), b"a volume's tar\n");
    write_with_parents(&src.join("rootfs-diff/etc/app.conf"), b"not podman's name for it\n");
    // A plain export keeps every name; `export --bundle` would leave these two out.
    let archive = tmp.path().join("src.tar");
    ckpt_ok(&[&"export", &src, &archive]);
    let reference = format!("oci:{}:cp1", tmp.path().join("layout").display());
    ckpt_ok(&[&"push", &"--store", &tmp.path().join("store-a"), &archive, &reference]);
    let out = tmp.path().join("pulled.tar");
    ckpt_ok(&[&"pull", &"--store", &tmp.path().join("store-b"), &reference, &out]);
    let (expected, dest) = (tmp.path().join("expected"), tmp.path().join("dest"));
    ckpt_ok(&[&"import", &archive, &expected]);
    ckpt_ok(&[&"import", &out, &dest]);
    let root = fs::metadata(&dest).unwrap();
    fs::File::open(&expected).unwrap().set_modified(root.modified().unwrap()).unwrap();
    fs::set_permissions(&expected, root.permissions()).unwrap();
    assert_trees_equal(&expected, &dest);
    assert_eq!(fs::read(dest.join("volumes/data.tar")).unwrap(), b"a volume's tar\n");
}

/// `ckpt pull` with `XDG_CACHE_HOME` set to `cache` and no `--store`.
fn pull_with_cache(cache: &Path, args: &[Arg]) -> std::process::Output {
    Command::new(ckpt_bin())
        .env("XDG_CACHE_HOME", cache)
        .arg("pull")
        .args(args.iter().map(|a| a.as_ref()))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn blobs_in(store: &Path) -> usize {
    fs::read_dir(store.join("blobs/sha256")).map_or(0, |d| d.count())
}

/// A bundle (of `seed`) pushed into an OCI layout under `dir`: the bundle and the reference.
fn pushed_to_a_layout(dir: &Path, seed: u64) -> (PathBuf, String) {
    let src = bundle(dir, seed);
    let reference = format!("oci:{}:cp1", dir.join("layout").display());
    ckpt_ok(&[&"push", &"--store", &dir.join("push-store"), &src, &reference]);
    (src, reference)
}

/// Where the default store of a pull into `s` goes when the user's cache is on another mount.
fn store_at_the_top_of(s: &Scratch) -> PathBuf {
    s.path(format!(".ckpt-store-{}", rustix::process::geteuid().as_raw()))
}

#[test]
fn a_pull_without_a_store_keeps_layers_on_dests_mount_and_clones_them_from_there() {
    let Some(s) = scratch(FsKind::Btrfs) else { return };
    let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
    let (src, reference) = pushed_to_a_layout(tmp.path(), 41);
    // The user's cache is on the root filesystem, DEST on the loop Btrfs.
    let cache = tmp.path().join("cache");
    let dest = s.path("restored");
    let out = pull_with_cache(&cache, &[&reference, &"--import", &dest]);
    assert!(out.status.success(), "{}", describe(&out));
    use std::os::unix::fs::PermissionsExt;
    let store = store_at_the_top_of(&s);
    assert!(blobs_in(&store) > 0, "no layers in {}", store.display());
    assert_eq!(fs::metadata(&store).unwrap().permissions().mode() & 0o7777, 0o700);
    assert!(!cache.join("ckpt").exists(), "the cache on another mount was used");
    assert_same_checkpoint(&src, &dest);
    let pages = dest.join("checkpoint/pages-2.img");
    assert!(
        btrfs_shared_bytes(&pages) >= 3 * MIB as u64,
        "{} does not share the store's extents",
        pages.display()
    );
}

#[test]
fn a_store_link_at_the_mount_top_is_not_followed_and_the_cache_is_used_instead() {
    let Some(s) = scratch(FsKind::Btrfs) else { return };
    let tmp = tempfile::tempdir_in(test_base_dir()).unwrap();
    let (src, reference) = pushed_to_a_layout(tmp.path(), 42);
    // Whoever could write the mount's top could point the store at a place they can read.
    let elsewhere = tmp.path().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let link = store_at_the_top_of(&s);
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let cache = tmp.path().join("cache");
    let out_tar = s.path("pulled.tar");
    let out = pull_with_cache(&cache, &[&reference, &out_tar]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stderr_of(&out).contains(&link.display().to_string()),
        "no warning naming the link\n{}",
        describe(&out)
    );
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0, "the store went through the link");
    assert!(blobs_in(&cache.join("ckpt")) > 0, "the cache was not used");
    let dest = tmp.path().join("dest");
    ckpt_ok(&[&"import", &out_tar, &dest]);
    assert_same_checkpoint(&src, &dest);
}
