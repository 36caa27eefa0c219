//! `cargo xtask image`: the container image `localhost/ghostwire:<version>`, built with
//! buildah from `deploy/Containerfile`.
//!
//! No registry can be reached here, so the image starts `FROM scratch`. The release
//! binary is a dynamically linked glibc executable; rather than a static build (glibc's
//! resolver and NSS do not link statically in a way that works), the image carries the
//! binary plus exactly the files `ldd` says it loads, the dynamic loader among them, the
//! system CA roots (the agent's TLS to collectors and to the API server uses them) and a
//! two-line `nsswitch.conf`. Nothing runs during the build (no `RUN`), so it needs no
//! container runtime, only buildah's storage.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::util::{self, Step};

/// Where the system CA bundle is, in Debian and in the image.
pub const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";
/// The image's name, without the tag.
pub const IMAGE_NAME: &str = "localhost/ghostwire";
/// Debian packages the image build needs (buildah builds; ca-certificates has the roots).
pub const IMAGE_DEBS: &[&str] = &["buildah", "ca-certificates"];

/// The files a dynamic executable loads, from `ldd` output: the absolute paths after
/// `=>`, and the loader line (`/lib64/ld-linux-x86-64.so.2 (0x...)`). The vDSO has no
/// file; a "not found" library is an error (the image could not start).
pub fn parse_ldd_paths(ldd: &str) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for line in ldd.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            bail!("ldd: a library is missing: {line}");
        }
        if line.contains("statically linked") {
            continue;
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next().unwrap_or_default(),
            None => line.split_whitespace().next().unwrap_or_default(),
        };
        if path.starts_with('/') {
            paths.push(PathBuf::from(path));
        }
    }
    if !paths.iter().any(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("ld-linux"))) {
        bail!("ldd named no dynamic loader (ld-linux*): is this a dynamic glibc executable?\n{ldd}");
    }
    Ok(paths)
}

/// The tag: the version `ghostwire --version` prints (`ghostwire 0.1.0` -> `0.1.0`).
pub fn parse_version(out: &str) -> Result<String> {
    let version = out.split_whitespace().nth(1).context("`ghostwire --version` printed no version")?;
    if !version.chars().all(|c| c.is_ascii_alphanumeric() || ".-_+".contains(c)) {
        bail!("`ghostwire --version` printed {out:?}: not a tag");
    }
    Ok(version.replace('+', "_"))
}

/// Copies `file` to `rootfs` at the same path (its content: a symlink is followed, so
/// `/lib64/ld-linux-x86-64.so.2` becomes a regular file where the binary looks for it).
fn copy_into(rootfs: &Path, file: &Path, dest: &Path) -> Result<()> {
    let rel = dest.strip_prefix("/").unwrap_or(dest);
    let to = rootfs.join(rel);
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::copy(file, &to).with_context(|| format!("copying {} to {}", file.display(), to.display()))?;
    Ok(())
}

/// Stages the build context in `context` (removed first): `rootfs/` with the binary at
/// `/ghostwire`, its libraries, the CA roots and `nsswitch.conf`. Returns the staged files.
pub fn stage(context: &Path, bin: &Path) -> Result<Vec<PathBuf>> {
    if context.exists() {
        std::fs::remove_dir_all(context).with_context(|| format!("removing {}", context.display()))?;
    }
    let rootfs = context.join("rootfs");
    std::fs::create_dir_all(&rootfs).with_context(|| format!("creating {}", rootfs.display()))?;
    let mut staged = vec![PathBuf::from("/ghostwire")];
    copy_into(&rootfs, bin, Path::new("/ghostwire"))?;
    let ldd = util::capture(Command::new("ldd").arg(bin))?;
    for lib in parse_ldd_paths(&ldd)? {
        copy_into(&rootfs, &lib, &lib)?;
        staged.push(lib);
    }
    let ca = Path::new("/").join(CA_BUNDLE);
    if !ca.is_file() {
        bail!("{} is missing (Debian package ca-certificates)", ca.display());
    }
    copy_into(&rootfs, &ca, &ca)?;
    staged.push(ca);
    let nss = rootfs.join("etc/nsswitch.conf");
    std::fs::write(&nss, "hosts: files dns\nnetworks: files\n")
        .with_context(|| format!("writing {}", nss.display()))?;
    staged.push(PathBuf::from("/etc/nsswitch.conf"));
    std::fs::copy(util::repo_root().join("deploy/Containerfile"), context.join("Containerfile"))
        .context("copying deploy/Containerfile")?;
    Ok(staged)
}

/// Installs buildah if missing, builds the release agent, stages the context under
/// `target/image/` and builds `localhost/ghostwire:<version>`. Returns the image name.
/// With `GHOSTWIRE_BIN` set (the tests), that binary is packed and nothing is built.
pub fn image() -> Result<String> {
    crate::setup::setup(false)?;
    crate::setup::ensure_debs(IMAGE_DEBS)?;
    let bin = match std::env::var_os("GHOSTWIRE_BIN").filter(|b| !b.is_empty()) {
        Some(bin) => {
            util::skipped(format!("packing GHOSTWIRE_BIN={} (not building)", PathBuf::from(&bin).display()));
            PathBuf::from(bin)
        }
        None => {
            crate::build_agent()?;
            util::agent_bin()
        }
    };
    let version = parse_version(&util::capture(Command::new(&bin).arg("--version"))?)?;
    let reference = format!("{IMAGE_NAME}:{version}");
    let context = util::target_dir().join("image");
    let step = Step::start(format!("staging the image's files in {}", context.display()));
    let staged = stage(&context, &bin)?;
    step.done();
    for file in &staged {
        println!("    {}", file.display());
    }
    let step = Step::start(format!("building {reference} with buildah (FROM scratch)"));
    util::run(
        Command::new("buildah")
            .args(["build", "--quiet", "--layers=false", "-f"])
            .arg(context.join("Containerfile"))
            .args(["-t", &reference])
            .arg(&context),
    )?;
    step.done();
    Ok(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_paths_include_the_loader_and_skip_the_vdso() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007fb2)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fb1)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007fb3)\n";
        let paths = parse_ldd_paths(ldd).expect("parse");
        assert_eq!(
            paths,
            ["/lib/x86_64-linux-gnu/libgcc_s.so.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]
                .map(PathBuf::from)
        );
    }

    #[test]
    fn ldd_missing_library_or_no_loader_is_an_error() {
        assert!(parse_ldd_paths("\tlibssl.so.3 => not found\n\t/lib64/ld-linux-x86-64.so.2 (0x1)\n").is_err());
        assert!(parse_ldd_paths("\tnot a dynamic executable\n").is_err());
    }

    #[test]
    fn version_becomes_the_tag() {
        assert_eq!(parse_version("ghostwire 0.1.0\n").expect("tag"), "0.1.0");
        assert_eq!(parse_version("ghostwire 1.2.3+dirty").expect("tag"), "1.2.3_dirty");
        assert!(parse_version("ghostwire").is_err());
        assert!(parse_version("ghostwire 1.0/x").is_err());
    }
}
