//! Builds the kernel programs (`ebpf/`) for the BPF target with the nightly toolchain and
//! places the object in `OUT_DIR`, where `capture` embeds it.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } =
        cargo_metadata::MetadataCommand::new().no_deps().exec().context("MetadataCommand::exec")?;
    let ebpf = packages
        .iter()
        .find(|p| p.name.as_str() == "ghostwire-ebpf")
        .ok_or_else(|| anyhow!("ghostwire-ebpf package not found"))?;
    let root_dir =
        ebpf.manifest_path.parent().ok_or_else(|| anyhow!("ghostwire-ebpf manifest has no parent directory"))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: ebpf.name.as_str(), root_dir: root_dir.as_str(), ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
