//! The OCI distribution protocol, as far as push and pull need it: `/v2/` with Basic or
//! Bearer token authentication, blob HEAD, cross-repository mount, monolithic upload, ranged blob GET, manifest
//! GET and PUT. Every response body read into memory is bounded.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use ureq::http::{Response, StatusCode};

use crate::error::{Context, Error, Result};
use crate::registry::digest::Digest;

/// How to reach and authenticate to registries.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Speak plain HTTP instead of HTTPS (podman's `--tls-verify=false`).
    pub plain_http: bool,
    /// `USER:PASS`, ahead of any auth file.
    pub creds: Option<String>,
    /// An auth file (`auth.json`, `config.json` format) instead of podman's defaults.
    pub authfile: Option<PathBuf>,
}

/// Manifests and indexes larger than this are refused: real ones are a few KiB.
pub(crate) const MAX_MANIFEST: u64 = 4 << 20;
/// Error bodies and token answers are read up to this.
const MAX_SMALL: u64 = 64 << 10;

pub(crate) const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

pub(crate) struct Client {
    agent: ureq::Agent,
    base: String,
    repo: String,
    reference: String,
    authorization: Option<String>,
}

type Answer = Response<ureq::Body>;

impl Client {
    /// Connects to `host` for `repo` and authenticates for pull (and push, with pull of the
    /// repositories blobs may be mounted from) as the registry's `/v2/` challenge asks.
    pub(crate) fn connect(
        host: &str,
        repo: &str,
        reference: &str,
        access: &Access,
        push: Option<&[String]>,
    ) -> Result<Client> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_per_read(Some(Duration::from_secs(300)))
            .build()
            .into();
        let scheme = if access.plain_http { "http" } else { "https" };
        let mut client = Client {
            agent,
            base: format!("{scheme}://{host}"),
            repo: repo.to_string(),
            reference: reference.to_string(),
            authorization: None,
        };
        let creds = credentials(host, access).map_err(|reason| client.error("read credentials", reason))?;
        let ping = client.send("connect", client.agent.get(format!("{}/v2/", client.base)))?;
        if ping.status() == StatusCode::UNAUTHORIZED {
            let challenge =
                ping.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("");
            client.authorization = Some(client.authenticate(challenge, creds.as_deref(), push)?);
            let again =
                client.send("connect", client.with_auth(client.agent.get(format!("{}/v2/", client.base))))?;
            client.expect(again, "authenticate", &[StatusCode::OK])?;
        } else {
            client.expect(ping, "connect", &[StatusCode::OK])?;
        }
        Ok(client)
    }

    pub(crate) fn error(&self, op: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Registry { reference: self.reference.clone(), op: op.into(), reason: reason.into() }
    }

    fn authenticate(&self, challenge: &str, creds: Option<&str>, push: Option<&[String]>) -> Result<String> {
        let refused = |why: String| self.error("authenticate", why);
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        let basic = creds.map(|c| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(c)));
        if scheme.eq_ignore_ascii_case("basic") {
            return basic.ok_or_else(|| {
                refused("the registry wants a user and password (--creds or an auth file)".into())
            });
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(refused(format!("unsupported authentication challenge {challenge:?}")));
        }
        let params = challenge_params(params);
        let get =
            |key: &str| params.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.as_str());
        let realm = get("realm")
            .ok_or_else(|| refused(format!("Bearer challenge without a realm: {challenge:?}")))?;
        let url = token_url(realm, get("service"), &self.repo, push);
        let mut request = self.agent.get(&url);
        if let Some(basic) = &basic {
            request = request.header("Authorization", basic);
        }
        let answer = self.send("authenticate", request)?;
        let mut answer = self.expect(answer, "authenticate", &[StatusCode::OK])?;
        let body = read_bounded(&mut answer, MAX_SMALL).map_err(|e| refused(format!("token answer: {e}")))?;
        let token: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| refused(format!("token answer is not JSON: {e}")))?;
        let token = token.get("token").or_else(|| token.get("access_token")).and_then(|t| t.as_str());
        token.map(|t| format!("Bearer {t}")).ok_or_else(|| refused("the token answer holds no token".into()))
    }

    fn with_auth<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.authorization {
            Some(value) => request.header("Authorization", value),
            None => request,
        }
    }

    fn send(&self, op: &str, request: ureq::RequestBuilder<ureq::typestate::WithoutBody>) -> Result<Answer> {
        request.call().map_err(|e| self.error(op.to_string(), format!("{e}")))
    }

    /// `answer` if its status is one of `ok`; otherwise an error quoting the registry.
    fn expect(&self, mut answer: Answer, op: &str, ok: &[StatusCode]) -> Result<Answer> {
        if ok.contains(&answer.status()) {
            return Ok(answer);
        }
        let status = answer.status();
        let body = read_bounded(&mut answer, MAX_SMALL).unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        let text = text.trim();
        let reason =
            if text.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status}: {text}") };
        Err(self.error(op.to_string(), reason))
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/v2/{}/{tail}", self.base, self.repo)
    }

    pub(crate) fn has_blob(&self, digest: &Digest) -> Result<bool> {
        let op = format!("check blob {digest}");
        let answer = self.send(&op, self.with_auth(self.agent.head(self.url(&format!("blobs/{digest}")))))?;
        if answer.status() == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        self.expect(answer, &op, &[StatusCode::OK]).map(|_| true)
    }

    /// Uploads `path` as blob `digest` in one PUT, unless `from` names another repository of
    /// this registry to mount it from and the registry agrees (201); whether it was mounted.
    pub(crate) fn push_blob(&self, digest: &Digest, path: &Path, from: Option<&str>) -> Result<bool> {
        let op = format!("push blob {digest}");
        let mut url = self.url("blobs/uploads/");
        if let Some(from) = from {
            url.push_str(&format!("?mount={}&from={}", query(digest.as_str()), query(from)));
        }
        let start = self.with_auth(self.agent.post(url));
        let answer = start.send_empty().map_err(|e| self.error(op.clone(), format!("{e}")))?;
        // A registry that cannot mount (or does not know how) answers 202 and an upload URL.
        let ok: &[StatusCode] = if from.is_some() {
            &[StatusCode::CREATED, StatusCode::ACCEPTED]
        } else {
            &[StatusCode::ACCEPTED]
        };
        let answer = self.expect(answer, &op, ok)?;
        if answer.status() == StatusCode::CREATED {
            return Ok(true);
        }
        let location = answer
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| self.error(op.clone(), "the upload answer has no Location"))?;
        let mut url =
            if location.starts_with('/') { format!("{}{location}", self.base) } else { location.to_string() };
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("digest={}", query(digest.as_str())));
        let file = File::open(path).at("open", path)?;
        let put = self.with_auth(self.agent.put(&url)).header("Content-Type", "application/octet-stream");
        let answer = put.send(file).map_err(|e| self.error(op.clone(), format!("{e}")))?;
        self.expect(answer, &op, &[StatusCode::CREATED]).map(|_| false)
    }

    /// The manifest (or index) named by `version` (a tag or digest), and its media type.
    pub(crate) fn manifest(&self, version: &str) -> Result<(Vec<u8>, String)> {
        let op = "pull manifest";
        let request = self
            .with_auth(self.agent.get(self.url(&format!("manifests/{version}"))))
            .header("Accept", MANIFEST_TYPES);
        let answer = self.send(op, request)?;
        let mut answer = self.expect(answer, op, &[StatusCode::OK])?;
        let media_type =
            answer.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body = read_bounded(&mut answer, MAX_MANIFEST).map_err(|e| self.error(op, e))?;
        Ok((body, media_type))
    }

    pub(crate) fn push_manifest(&self, tag: &str, manifest: &[u8], media_type: &str) -> Result<()> {
        let op = format!("push manifest {tag}");
        let put = self
            .with_auth(self.agent.put(self.url(&format!("manifests/{tag}"))))
            .header("Content-Type", media_type);
        let answer = put.send(manifest).map_err(|e| self.error(op.clone(), format!("{e}")))?;
        self.expect(answer, &op, &[StatusCode::CREATED]).map(drop)
    }

    /// The blob's data from byte `offset` on (a Range request when not 0) as a stream, and
    /// the byte it really starts at: 0 when the registry ignored the Range and sends all of
    /// it. The caller checks its digest as it reads.
    pub(crate) fn blob(&self, digest: &Digest, offset: u64) -> Result<(impl Read + use<>, u64)> {
        let op = format!("pull blob {digest}");
        let mut request = self.with_auth(self.agent.get(self.url(&format!("blobs/{digest}"))));
        if offset > 0 {
            request = request.header("Range", format!("bytes={offset}-"));
        }
        let answer = self.send(&op, request)?;
        let answer = self.expect(answer, &op, &[StatusCode::OK, StatusCode::PARTIAL_CONTENT])?;
        let start = if answer.status() == StatusCode::PARTIAL_CONTENT {
            let range = answer.headers().get("content-range").and_then(|v| v.to_str().ok()).unwrap_or("");
            range_start(range)
                .ok_or_else(|| self.error(op.clone(), format!("unreadable Content-Range {range:?}")))?
        } else {
            0
        };
        Ok((answer.into_body().into_reader(), start))
    }
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL` answer.
fn range_start(range: &str) -> Option<u64> {
    range.strip_prefix("bytes ")?.split_once('-')?.0.trim().parse().ok()
}

/// The token request for `repo`: pull, or pull and push with pull of the repositories a
/// push may mount blobs from.
fn token_url(realm: &str, service: Option<&str>, repo: &str, push: Option<&[String]>) -> String {
    let actions = if push.is_some() { "pull,push" } else { "pull" };
    let mut url = format!("{realm}?scope={}", query(&format!("repository:{repo}:{actions}")));
    for from in push.unwrap_or_default() {
        url.push_str(&format!("&scope={}", query(&format!("repository:{from}:pull"))));
    }
    if let Some(service) = service {
        url.push_str(&format!("&service={}", query(service)));
    }
    url
}

/// Reads a whole body of at most `limit` bytes.
fn read_bounded(answer: &mut Answer, limit: u64) -> std::result::Result<Vec<u8>, String> {
    let mut body = Vec::new();
    answer
        .body_mut()
        .as_reader()
        .take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|e| format!("read failed: {e}"))?;
    if body.len() as u64 > limit {
        return Err(format!("larger than {limit} bytes: refused"));
    }
    Ok(body)
}

/// `key="value", key=value` pairs of a `WWW-Authenticate` challenge.
fn challenge_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_string();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        params.push((key, value.to_string()));
        rest = next.trim_start().trim_start_matches(',');
    }
    params
}

/// Percent-encodes a query value.
fn query(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `USER:PASS` for `host`: `--creds`, else the auth file named, else podman's defaults
/// (`$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
/// `~/.config/containers/auth.json`, `~/.docker/config.json`), the first that has the host.
fn credentials(host: &str, access: &Access) -> std::result::Result<Option<String>, String> {
    if let Some(creds) = &access.creds {
        return Ok(Some(creds.clone()));
    }
    let files: Vec<PathBuf> = match &access.authfile {
        Some(file) => vec![file.clone()],
        None => {
            let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
            let mut files = Vec::new();
            files.extend(env("REGISTRY_AUTH_FILE"));
            files.extend(env("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")));
            if let Some(home) = env("HOME") {
                files.push(home.join(".config/containers/auth.json"));
                files.push(home.join(".docker/config.json"));
            }
            files
        }
    };
    let named = access.authfile.is_some();
    for file in files {
        let data = match std::fs::read(&file) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => continue,
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        let json: serde_json::Value =
            serde_json::from_slice(&data).map_err(|e| format!("{}: not JSON: {e}", file.display()))?;
        let Some(auths) = json.get("auths").and_then(|a| a.as_object()) else { continue };
        let entry = auths.iter().find(|(key, _)| {
            let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
            key.split('/').next() == Some(host)
        });
        if let Some(auth) = entry.and_then(|(_, v)| v.get("auth")).and_then(|a| a.as_str()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth)
                .map_err(|e| format!("{}: {host}: auth is not base64: {e}", file.display()))?;
            let creds = String::from_utf8(decoded)
                .map_err(|_| format!("{}: {host}: auth is not UTF-8", file.display()))?;
            return Ok(Some(creds));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_challenge_splits_into_its_parameters() {
        let params = challenge_params(
            r#"realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#,
        );
        assert_eq!(params[0], ("realm".into(), "https://auth.example/token".into()));
        assert_eq!(params[1], ("service".into(), "registry.example".into()));
        assert_eq!(params[2], ("scope".into(), "repository:a:pull".into()));
    }

    #[test]
    fn a_push_token_asks_to_pull_from_the_repositories_it_may_mount_from() {
        let url = token_url("https://auth/token", Some("reg"), "team/app", Some(&["team/base".to_string()]));
        assert_eq!(
            url,
            "https://auth/token?scope=repository%3Ateam%2Fapp%3Apull%2Cpush\
             &scope=repository%3Ateam%2Fbase%3Apull&service=reg"
        );
        assert_eq!(token_url("https://a/t", None, "app", None), "https://a/t?scope=repository%3Aapp%3Apull");
    }

    #[test]
    fn a_content_range_gives_its_first_byte() {
        assert_eq!(range_start("bytes 1000-4095/4096"), Some(1000));
        assert_eq!(range_start("bytes */4096"), None);
        assert_eq!(range_start("items 1-2/3"), None);
    }

    #[test]
    fn an_auth_file_entry_for_the_host_gives_its_credentials() {
        let dir = std::env::temp_dir().join(format!("ckpt-authfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("auth.json");
        std::fs::write(
            &file,
            r#"{"auths":{"other:1":{"auth":"eDp5"},"127.0.0.1:5000":{"auth":"dXNlcjpwYXNz"}}}"#,
        )
        .unwrap();
        let access = Access { authfile: Some(file), ..Access::default() };
        assert_eq!(credentials("127.0.0.1:5000", &access).unwrap().as_deref(), Some("user:pass"));
        assert_eq!(credentials("elsewhere:1", &access).unwrap(), None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
