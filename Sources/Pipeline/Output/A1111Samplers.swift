// A1111Samplers: AUTOMATIC1111's names for sdd's schedulers — written into PNG "parameters" text (so A1111's
// PNG Info and other tools that read it see sampler names they know) and accepted by the daemon's A1111 API.

public enum A1111Samplers {
    /// A1111's sampler name, its k-diffusion aliases, and the sdd scheduler (`SchedulerKind` raw value) it runs.
    /// An entry whose scheduler this build lacks (LCM before the lcm scheduler exists) is listed but not usable.
    public static let table: [(name: String, aliases: [String], scheduler: String)] = [
        ("Euler a", ["k_euler_a", "k_euler_ancestral"], "euler-a"),
        ("Euler", ["k_euler"], "euler"),
        ("LMS", ["k_lms"], "lms"),
        ("DDIM", [], "ddim"),
        ("PLMS", [], "pndm"),  // PNDM with skipped PRK steps, as diffusers' PNDMScheduler runs SD 1.x
        ("DPM++ 2M", ["k_dpmpp_2m"], "dpm++2m"),
        ("LCM", ["k_lcm"], "lcm"),
    ]

    /// The A1111 name of an sdd scheduler; the scheduler's own name when A1111 has none.
    public static func name(ofScheduler scheduler: String) -> String {
        table.first { $0.scheduler == scheduler }?.name ?? scheduler
    }
}
