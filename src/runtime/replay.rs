//! Recreating a checkpointed container: podman's recorded command line replayed as
//! `podman create`, and the runtime spec the process ran under given to the new container.

use std::path::Path;

use serde_json::Value;

/// `podman create` arguments that make the container `config.dump`'s `CreateCommand` made,
/// named `name`: podman's own record of the command line, replayed as podman's
/// `generate systemd --new` does, without what only `run` takes or what names the old one.
pub(super) fn create_args(config: &Value, name: &str) -> std::result::Result<Vec<String>, String> {
    let command: Vec<&str> = config
        .get("CreateCommand")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if command.is_empty() {
        return Err(
            "no CreateCommand (the container was made through podman's API, not its command line)".into()
        );
    }
    let verb = command
        .iter()
        .position(|w| matches!(*w, "run" | "create"))
        .ok_or("CreateCommand has neither run nor create")?;
    // The image and the container's command follow the options; the command is recorded on
    // its own, so the image is the last word before it.
    let image = config.get("RawImageName").and_then(Value::as_str).unwrap_or_default();
    let cmd_len = config.get("command").and_then(Value::as_array).map_or(0, Vec::len);
    let image_at = command.len().checked_sub(cmd_len + 1).filter(|&i| i > verb && command[i] == image);
    let image_at = match image_at {
        Some(i) => i,
        None => command
            .iter()
            .rposition(|w| *w == image)
            .filter(|&i| i > verb)
            .ok_or("cannot find the image in CreateCommand")?,
    };
    let mut args = vec!["--name".to_string(), name.to_string()];
    let mut options = command[verb + 1..image_at].iter();
    while let Some(&option) = options.next() {
        match option {
            "-d" | "--detach" | "--detach=true" | "--replace" | "--replace=true" => {}
            "--name" | "--detach-keys" | "--sig-proxy" => {
                options.next();
            }
            _ if option.starts_with("--name=")
                || option.starts_with("--detach-keys=")
                || option.starts_with("--sig-proxy=") => {}
            // Combined short flags: -dit.
            _ if option.len() > 2
                && option.starts_with('-')
                && !option.starts_with("--")
                && option[1..].bytes().all(|b| b"ditP".contains(&b)) =>
            {
                let kept: String = option[1..].chars().filter(|&c| c != 'd').collect();
                if !kept.is_empty() {
                    args.push(format!("-{kept}"));
                }
            }
            _ => args.push(option.to_string()),
        }
    }
    args.extend(command[image_at..].iter().map(|w| w.to_string()));
    Ok(args)
}

/// The checkpointed container's own places, from its `config.dump`, and the new container's.
pub(super) struct Places<'a> {
    /// The checkpointed container's ID.
    pub(super) old_id: &'a str,
    /// Its userdata dir and its run dir (where podman kept its pid file).
    pub(super) old_dirs: [Option<&'a Path>; 2],
    /// The new container's ID.
    pub(super) new_id: &'a str,
    /// Its userdata dir and its run dir.
    pub(super) new_dirs: [Option<&'a Path>; 2],
    /// Where podman will mount the new container's rootfs.
    pub(super) new_root: &'a Path,
    /// The new container's named volumes: where each is mounted, its directory.
    pub(super) new_volumes: Vec<(&'a str, &'a Path)>,
}

/// The runtime spec a new container restores the checkpoint with: `spec.dump`, the spec the
/// checkpointed process ran under (podman's own `restore --import` uses it as the new
/// container's `config.json` too), with what belonged to the old container made the new
/// one's: the rootfs, mount sources in its userdata and run dirs, its volumes (by where they
/// are mounted: an anonymous volume has a new name), its cgroup, and the hostname podman
/// derived from its ID. A mount of some other file of the old container's cannot be given to
/// the new one: refused.
pub(super) fn respec(spec: &Value, places: &Places<'_>) -> std::result::Result<Value, String> {
    let mut spec = spec.clone();
    let root = spec.pointer_mut("/root/path").ok_or("spec.dump has no root path")?;
    *root = places.new_root.to_string_lossy().into();
    for mount in spec.get_mut("mounts").and_then(Value::as_array_mut).into_iter().flatten() {
        let Some(source) = mount.get("source").and_then(Value::as_str) else { continue };
        let destination = mount.get("destination").and_then(Value::as_str).unwrap_or_default();
        if let Some((_, dir)) = places.new_volumes.iter().find(|(dest, _)| *dest == destination) {
            mount["source"] = dir.to_string_lossy().into();
            continue;
        }
        if !source.contains(places.old_id) {
            continue;
        }
        let moved = places.old_dirs.iter().zip(&places.new_dirs).find_map(|(old, new)| {
            let rest = Path::new(source).strip_prefix((*old)?).ok()?;
            Some(new.as_ref()?.join(rest))
        });
        let moved = moved.ok_or_else(|| {
            format!("the mount on {destination} is the checkpointed container's own {source}")
        })?;
        mount["source"] = moved.to_string_lossy().into();
    }
    if let Some(cgroup) = spec.pointer_mut("/linux/cgroupsPath")
        && let Some(path) = cgroup.as_str()
    {
        *cgroup = path.replace(places.old_id, places.new_id).into();
    }
    let (old_host, new_host) = (short(places.old_id), short(places.new_id));
    if let Some(hostname) = spec.get_mut("hostname").filter(|h| h.as_str() == Some(old_host)) {
        *hostname = new_host.into();
    }
    let old_env = format!("HOSTNAME={old_host}");
    for var in spec.pointer_mut("/process/env").and_then(Value::as_array_mut).into_iter().flatten() {
        if var.as_str() == Some(&old_env) {
            *var = format!("HOSTNAME={new_host}").into();
        }
    }
    Ok(spec)
}

/// The hostname podman gives a container whose hostname was not set: its ID's first 12 digits.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(create: &[&str], command: &[&str]) -> Value {
        serde_json::json!({"CreateCommand": create, "RawImageName": "localhost/bb", "command": command})
    }

    #[test]
    fn create_args_replay_run_as_create_without_detach_and_with_the_new_name() {
        let c = config(
            &[
                "podman",
                "--root",
                "/s",
                "run",
                "-dit",
                "--name",
                "old",
                "-e",
                "A=1",
                "localhost/bb",
                "sh",
                "-c",
                "-d",
            ],
            &["sh", "-c", "-d"],
        );
        assert_eq!(
            create_args(&c, "new").unwrap(),
            ["--name", "new", "-it", "-e", "A=1", "localhost/bb", "sh", "-c", "-d"]
        );
    }

    #[test]
    fn create_args_without_a_recorded_command_line_are_refused() {
        assert!(create_args(&serde_json::json!({}), "x").is_err());
    }

    fn places<'a>(old_dirs: [Option<&'a Path>; 2], new_dirs: [Option<&'a Path>; 2]) -> Places<'a> {
        let new_volumes = vec![("/anon", Path::new("/s/volumes/cccc/_data"))];
        let new_root = Path::new("/s/overlay/l2/merged");
        Places { old_id: OLD, old_dirs, new_id: NEW, new_dirs, new_root, new_volumes }
    }

    const OLD: &str = "aaaaaaaaaaaa1111";
    const NEW: &str = "bbbbbbbbbbbb2222";

    fn dumped() -> Value {
        serde_json::json!({
            "hostname": "aaaaaaaaaaaa",
            "root": {"path": "/s/overlay/l1/merged"},
            "process": {"args": ["sh"], "env": ["HOSTNAME=aaaaaaaaaaaa", "X=1"]},
            "linux": {"cgroupsPath": "/libpod_parent/libpod-aaaaaaaaaaaa1111"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "source": "/run/c/aaaaaaaaaaaa1111/userdata/hosts"},
                {"destination": "/dev/shm", "source": "/s/c/aaaaaaaaaaaa1111/userdata/shm"},
                {"destination": "/srv", "source": "/home/u/srv"},
                {"destination": "/anon", "type": "bind", "source": "/s/volumes/aaaa/_data"}
            ]
        })
    }

    #[test]
    fn respec_gives_the_new_container_its_root_dirs_volumes_cgroup_and_hostname() {
        let (old_static, old_run) =
            (Path::new("/s/c/aaaaaaaaaaaa1111/userdata"), Path::new("/run/c/aaaaaaaaaaaa1111/userdata"));
        let (new_static, new_run) =
            (Path::new("/s/c/bbbbbbbbbbbb2222/userdata"), Path::new("/run/c/bbbbbbbbbbbb2222/userdata"));
        let spec =
            respec(&dumped(), &places([Some(old_static), Some(old_run)], [Some(new_static), Some(new_run)]))
                .unwrap();
        assert_eq!(spec["root"]["path"], "/s/overlay/l2/merged");
        assert_eq!(spec["hostname"], "bbbbbbbbbbbb");
        assert_eq!(spec["process"]["env"], serde_json::json!(["HOSTNAME=bbbbbbbbbbbb", "X=1"]));
        assert_eq!(spec["linux"]["cgroupsPath"], "/libpod_parent/libpod-bbbbbbbbbbbb2222");
        let sources: Vec<&str> =
            spec["mounts"].as_array().unwrap().iter().map(|m| m["source"].as_str().unwrap()).collect();
        assert_eq!(
            sources,
            [
                "proc",
                "/run/c/bbbbbbbbbbbb2222/userdata/hosts",
                "/s/c/bbbbbbbbbbbb2222/userdata/shm",
                "/home/u/srv",
                "/s/volumes/cccc/_data"
            ]
        );
        assert_eq!(spec["process"]["args"], dumped()["process"]["args"]);
    }

    #[test]
    fn respec_refuses_a_mount_of_the_old_containers_files_outside_its_known_dirs() {
        let old_static = Path::new("/s/c/aaaaaaaaaaaa1111/userdata");
        let new_static = Path::new("/s/c/bbbbbbbbbbbb2222/userdata");
        let why = respec(&dumped(), &places([Some(old_static), None], [Some(new_static), None])).unwrap_err();
        assert!(
            why.contains("/etc/hosts") && why.contains("/run/c/aaaaaaaaaaaa1111/userdata/hosts"),
            "{why}"
        );
    }
}
