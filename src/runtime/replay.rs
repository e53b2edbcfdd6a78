//! Recreating a checkpointed container: podman's recorded command line replayed as
//! `podman create`, and the runtime specs compared where they shape the restored process.

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

/// The parts of two OCI runtime specs in which they differ, of those that shape the process a
/// checkpoint restores: what runs, as whom, with which privileges, limits, namespaces and
/// mounts. Names, IDs, hostnames and host paths differ between two containers by nature.
pub(super) fn spec_differences(old: &Value, new: &Value) -> Vec<String> {
    let mut differences = Vec::new();
    for (what, pointer) in [
        ("process arguments", "/process/args"),
        ("working directory", "/process/cwd"),
        ("user", "/process/user"),
        ("terminal", "/process/terminal"),
        ("capabilities", "/process/capabilities"),
        ("rlimits", "/process/rlimits"),
        ("no_new_privileges", "/process/noNewPrivileges"),
        ("read-only rootfs", "/root/readonly"),
        ("seccomp profile", "/linux/seccomp"),
        ("masked paths", "/linux/maskedPaths"),
        ("read-only paths", "/linux/readonlyPaths"),
        ("sysctls", "/linux/sysctl"),
        ("ID mappings", "/linux/uidMappings"),
    ] {
        if old.pointer(pointer) != new.pointer(pointer) {
            differences.push(what.to_string());
        }
    }
    if env(old) != env(new) {
        differences.push("environment".into());
    }
    if namespaces(old) != namespaces(new) {
        differences.push("namespaces".into());
    }
    if mounts(old) != mounts(new) {
        differences.push("mounts".into());
    }
    differences
}

/// The environment, less `HOSTNAME`, which podman sets to each container's own.
fn env(spec: &Value) -> Vec<&str> {
    let mut env: Vec<&str> =
        strings(spec.pointer("/process/env")).filter(|v| !v.starts_with("HOSTNAME=")).collect();
    env.sort_unstable();
    env
}

fn namespaces(spec: &Value) -> Vec<&str> {
    let mut types: Vec<&str> = spec
        .pointer("/linux/namespaces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|ns| ns.get("type").and_then(Value::as_str))
        .collect();
    types.sort_unstable();
    types
}

/// Each mount's destination, type and options (its source is a path on the host).
fn mounts(spec: &Value) -> Vec<(String, String, Vec<&str>)> {
    let mut mounts: Vec<_> = spec
        .get("mounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|m| {
            let text = |key| m.get(key).and_then(Value::as_str).unwrap_or_default().to_string();
            let mut options: Vec<&str> = strings(m.get("options")).collect();
            options.sort_unstable();
            (text("destination"), text("type"), options)
        })
        .collect();
    mounts.sort();
    mounts
}

fn strings(value: Option<&Value>) -> impl Iterator<Item = &str> {
    value.and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str)
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

    #[test]
    fn spec_differences_ignore_hostname_and_host_paths_but_not_capabilities() {
        let old = serde_json::json!({
            "hostname": "a", "process": {"args": ["sh"], "env": ["HOSTNAME=a", "X=1"], "capabilities": {"bounding": ["CAP_KILL"]}},
            "mounts": [{"destination": "/etc/hosts", "type": "bind", "source": "/old/hosts", "options": ["bind"]}]
        });
        let mut new = old.clone();
        new["hostname"] = "b".into();
        new["process"]["env"] = serde_json::json!(["X=1", "HOSTNAME=b"]);
        new["mounts"][0]["source"] = "/new/hosts".into();
        assert!(spec_differences(&old, &new).is_empty());
        new["process"]["capabilities"]["bounding"] = serde_json::json!(["CAP_KILL", "CAP_SYS_ADMIN"]);
        assert_eq!(spec_differences(&old, &new), ["capabilities"]);
    }
}
