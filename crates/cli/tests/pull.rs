//! End-to-end tests of `hiber pull` from a real registry (the CNCF distribution server that
//! scripts/setup-test.sh unpacks) on loopback, with images skopeo pushes from layouts the tests
//! make: nothing comes from the internet.

mod common;

use common::{can_run, Home, Registry};

/// Pushes layout `layout` to `registry` as `repository:tag`, with skopeo's `options` (`--all`:
/// every platform of its index).
fn push(registry: &Registry, layout: &std::path::Path, reference: &str, options: &[&str]) -> bool {
    let (from, to) = (format!("oci:{}", layout.display()), format!("docker://{}/{reference}", registry.address()));
    let tls = ["--dest-tls-verify=false"];
    let args: Vec<&str> = tls.into_iter().chain(options.iter().copied()).chain([from.as_str(), to.as_str()]).collect();
    common::skopeo(&args)
}

#[test]
fn pulls_run_with_their_defaults_move_only_new_layers_and_refuse_damage() {
    if !can_run("pulls_run_with_their_defaults_move_only_new_layers_and_refuse_damage") {
        return;
    }
    let Some(registry) = Registry::start("") else { return };
    let home = Home::new();
    let (v1, v2) = (home.path().join("v1"), home.path().join("v2"));
    home.oci_layout(&v1, "echo v1 $(id -u) $GREETING");
    home.oci_layout(&v2, "echo v2 $(pwd)");
    // The amd64 image alone (a list cannot change its images' digests), its layers recompressed
    // with zstd by skopeo.
    if !push(&registry, &v1, "team/zstd:v1", &["--multi-arch", "system", "--dest-compress-format", "zstd"])
        || !push(&registry, &v1, "team/app:v1", &["--all"])
        || !push(&registry, &v2, "team/app:v2", &["--all"])
    {
        return;
    }

    // The registry holds an index (arm64 listed first): the pull must choose amd64.
    let raw = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", &format!("docker://{}/team/app:v1", registry.address())])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&raw.stdout).contains("application/vnd.oci.image.index.v1+json"));
    let first = home.run(&["pull", &format!("{}/team/app:v1", registry.address())]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first.stdout, "app\n");
    assert!(first.stderr.contains("2 layers (0 already stored)"), "{}", first.stderr);
    assert_eq!(home.ok(&["run", "app"]), "v1 1000 hi\n");

    // v2 shares v1's layers (the same base, the same user layer): only its manifest and
    // configuration move.
    let second = home.run(&["pull", "--name", "app2", &format!("{}/team/app:v2", registry.address())]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(second.stderr.contains("2 layers (2 already stored)"), "{}", second.stderr);
    assert_eq!(home.ok(&["run", "app2"]), "v2 /srv/app\n");

    let manifest = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", &format!("docker://{}/team/zstd:v1", registry.address())])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&manifest.stdout);
    assert!(text.contains("tar+zstd"), "zstd layers were pushed: {text}");
    let zstd_home = Home::new();
    let zstd = zstd_home.run(&["pull", &format!("{}/team/zstd:v1", registry.address())]);
    assert_eq!(zstd.code, 0, "{}", zstd.stderr);
    assert_eq!(zstd_home.ok(&["run", "zstd"]), "v1 1000 hi\n");

    // Bad input: one line each, and no image.
    let missing = home.run(&["pull", "--name", "nope", &format!("{}/team/app:v3", registry.address())]);
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.trim().ends_with("has no team/app/manifests/v3"), "{}", missing.stderr);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let unreachable = home.run(&["pull", &format!("127.0.0.1:{closed}/team/app:v1")]);
    assert!(
        unreachable.stderr.contains(&format!("cannot reach registry 127.0.0.1:{closed}")),
        "{}",
        unreachable.stderr
    );
    assert_eq!(unreachable.stderr.trim().lines().count(), 1, "{}", unreachable.stderr);
    let bad = home.run(&["pull", "app"]);
    assert!(bad.stderr.contains("invalid image reference 'app'"), "{}", bad.stderr);

    // A download cut short resumes from its `.partial`: from a true half it finishes; from a
    // wrong half (resumed, not started over) it fails its digest, and starts over next time.
    // v1's base layer: the largest of its blobs (v2's differs: gzip records the time).
    let biggest =
        walk(&v1.join("blobs/sha256")).into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let hex = biggest.file_name().unwrap().to_str().unwrap().to_string();
    let bytes = std::fs::read(&biggest).unwrap();
    let half = &bytes[..bytes.len() / 2];
    for (wrong, fails) in [(true, true), (false, false)] {
        let resumed = Home::new();
        let pulls =
            resumed.path().join(format!("pulls/{}/team/app/blobs/sha256", registry.address().replace(':', "_")));
        std::fs::create_dir_all(&pulls).unwrap();
        let partial: Vec<u8> = if wrong { half.iter().map(|b| !b).collect() } else { half.to_vec() };
        std::fs::write(pulls.join(format!("{hex}.partial")), partial).unwrap();
        let pulled = resumed.run(&["pull", &format!("{}/team/app:v1", registry.address())]);
        assert_eq!(
            pulled.code != 0,
            fails,
            "a {} partial download: {}",
            if wrong { "wrong" } else { "true" },
            pulled.stderr
        );
        if fails {
            assert!(pulled.stderr.contains(&format!("sent a bad layer sha256:{hex}")), "{}", pulled.stderr);
            assert!(!pulls.join(format!("{hex}.partial")).exists(), "the bad partial download is dropped");
            assert_eq!(
                resumed.run(&["pull", &format!("{}/team/app:v1", registry.address())]).code,
                0,
                "and starts over"
            );
        }
        assert_eq!(resumed.ok(&["run", "app"]), "v1 1000 hi\n");
    }

    // A layer damaged in the registry's storage is refused before anything is stored.
    let fresh = Home::new();
    let mut damaged = 0;
    for data in walk(&registry.blobs()).into_iter().filter(|p| p.ends_with("data")) {
        let bytes = std::fs::read(&data).unwrap();
        if bytes.starts_with(&[0x1f, 0x8b]) && bytes.len() > 4096 {
            let mut bytes = bytes;
            bytes[2000] ^= 0xff;
            std::fs::write(&data, bytes).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0, "no gzip layer found in the registry's storage");
    let refused = fresh.run(&["pull", &format!("{}/team/app:v1", registry.address())]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("sent a bad layer sha256:"), "{}", refused.stderr);
    assert!(fresh.run(&["images", "--json"]).stdout.trim() == "[]", "nothing was stored");
}

/// Every file below `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// A registry token service (the protocol Docker Hub and GHCR speak): `GET /token?scope=...`
/// with Basic credentials `tester:secret` answers a JWT signed (RS256, by `openssl`) with key
/// argv[2], its certificate argv[3] in the `x5c` header, granting the scope's repository; it
/// listens on 127.0.0.1:argv[1] and counts the tokens it gave in argv[4].
const TOKEN_SERVICE: &str = r#"
import base64, http.server, json, subprocess, sys, time, urllib.parse
port, key, cert, counter = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
der = subprocess.run(["openssl", "x509", "-in", cert, "-outform", "DER"], capture_output=True, check=True).stdout
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
given = 0
class Tokens(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args): pass
    def do_GET(self):
        global given
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        if self.headers.get("Authorization") != "Basic " + base64.b64encode(b"tester:secret").decode():
            self.send_response(401); self.end_headers(); return
        access = []
        for scope in query.get("scope", []):
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        claims = {"iss": "hiber-test", "sub": "tester", "aud": query["service"][0], "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": str(now) + str(given), "access": access}
        signing = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=signing.encode(),
                                   capture_output=True, check=True).stdout
        body = json.dumps({"token": signing + "." + b64(signature)}).encode()
        given += 1
        open(counter, "w").write(str(given))
        self.send_response(200); self.send_header("Content-Type", "application/json"); self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", port), Tokens).serve_forever()
"#;

#[test]
fn pulls_from_a_registry_with_token_authentication() {
    if !can_run("pulls_from_a_registry_with_token_authentication") {
        return;
    }
    let keys = tempfile::tempdir().unwrap();
    let (key, cert) = (keys.path().join("key.pem"), keys.path().join("cert.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=hiber-test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let counter = keys.path().join("tokens");
    let service = std::process::Command::new("python3")
        .args(["-c", TOKEN_SERVICE, &port.to_string()])
        .args([&key, &cert, &counter])
        .spawn()
        .unwrap();
    let _service = common::Killed(service);
    assert!(common::eventually(std::time::Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    let auth = format!(
        "auth:\n  token:\n    realm: http://127.0.0.1:{port}/token\n    service: hiber-test-registry\n    issuer: hiber-test\n    rootcertbundle: {}\n",
        cert.display()
    );
    let Some(registry) = Registry::start(&auth) else { return };
    let home = Home::new();
    let layout = home.path().join("layout");
    home.oci_layout(&layout, "echo authenticated");
    if !common::skopeo(&[
        "--all",
        "--dest-tls-verify=false",
        "--dest-creds",
        "tester:secret",
        &format!("oci:{}", layout.display()),
        &format!("docker://{}/private/app:v1", registry.address()),
    ]) {
        return;
    }
    let reference = format!("{}/private/app:v1", registry.address());
    let anonymous = home.run(&["pull", &reference]);
    assert_ne!(anonymous.code, 0);
    assert!(anonymous.stderr.contains("refused access"), "{}", anonymous.stderr);
    let given = || std::fs::read_to_string(&counter).unwrap_or_default();
    let before = given();
    let pulled = home
        .cmd(&["pull", &reference])
        .env("HIBER_REGISTRY_USER", "tester")
        .env("HIBER_REGISTRY_PASSWORD", "secret")
        .output()
        .unwrap();
    assert!(pulled.status.success(), "{}", String::from_utf8_lossy(&pulled.stderr));
    assert_ne!(given(), before, "the pull took a token from the service");
    assert_eq!(home.ok(&["run", "app"]), "authenticated\n");
}
