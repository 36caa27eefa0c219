//! Empty programs for measuring what a hook costs by itself (`ghostwire --empty-probes`,
//! `cargo xtask bench hooks`): attached to a candidate hook set, they show the
//! throughput floor of that set before any work is done.
use aya_ebpf::{
    macros::{cgroup_skb, raw_tracepoint, tracepoint, uprobe, uretprobe},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext, SkBuffContext, TracePointContext},
};

#[tracepoint]
pub fn floor_tp(_ctx: TracePointContext) -> u32 {
    0
}

#[raw_tracepoint]
pub fn floor_raw(_ctx: RawTracePointContext) -> u32 {
    0
}

/// A cgroup_skb program must return 1, or it drops the packet.
#[cgroup_skb]
pub fn floor_skb(_ctx: SkBuffContext) -> i32 {
    1
}

/// What a uprobe (a breakpoint trap into the kernel) costs by itself.
#[uprobe]
pub fn floor_uprobe(_ctx: ProbeContext) -> u32 {
    0
}

/// A uretprobe costs more: the entry trap also rewrites the return address.
#[uretprobe]
pub fn floor_uretprobe(_ctx: RetProbeContext) -> u32 {
    0
}
