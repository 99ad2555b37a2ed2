//! Docker for the tests: the engine's CLI, and a network of a test's own whose gateway (the
//! host's address on it) is where the test's servers listen for the containers.

use std::net::IpAddr;

/// Runs `docker <args>`; a failure fails the test with Docker's own words.
pub fn docker(args: &[&str]) -> String {
    let out = std::process::Command::new("docker").args(args).output().expect("docker");
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Fails loudly unless `container/build.sh` has built `images` (`make test` runs it first).
pub fn assert_images_built(images: &[&str]) {
    for image in images {
        let out = std::process::Command::new("docker").args(["image", "inspect", image]).output().expect("docker");
        assert!(out.status.success(), "{image} is missing: `make test` builds it with container/build.sh");
    }
}

/// A Docker network of the test's own; it and every container on it are removed at the end.
#[derive(Debug)]
pub struct Net {
    pub name: String,
    pub gateway: IpAddr,
}

impl Net {
    pub fn create(tag: &str) -> Net {
        let name = format!("recfleet-test-{tag}-{}", std::process::id());
        let _ = std::process::Command::new("docker").args(["network", "rm", &name]).output();
        docker(&["network", "create", &name]);
        let gateway = docker(&["network", "inspect", &name, "--format", "{{(index .IPAM.Config 0).Gateway}}"]).parse().unwrap();
        Net { name, gateway }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for id in docker(&["ps", "-aq", "--filter", &format!("network={}", self.name)]).split_whitespace() {
            let _ = std::process::Command::new("docker").args(["rm", "-f", "-v", id]).output();
        }
        let _ = std::process::Command::new("docker").args(["network", "rm", &self.name]).output();
    }
}
