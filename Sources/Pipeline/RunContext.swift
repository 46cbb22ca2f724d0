// RunContext: how one generation uses memory — its plan, UNet memory mode, VAE tiling and the per-stage pool
// limits, the UNet kernels' scratch bounds — as one value passed down the call, so a loaded pipeline holds no per-run settings.

import TiledKernels

/// The settings of one run. `begin`/`generate`/`resume` take it and the `Generation` keeps it; the pipeline itself
/// stays the same from run to run, so nothing one run chooses reaches the next.
///
/// The tensor pool (`TensorMemory`) and the kernels' scratch arenas are process-wide by nature (every kernel
/// allocates from them). Their limits are therefore set from this value at one place per stage as the stage
/// starts — the text encoder and the scratch limit when the generation begins, the UNet's pool limit before each
/// step, the VAE's before the decode — and every stage sets its own, so a run never inherits the previous one's.
public struct RunContext: Sendable {
    /// The memory plan the run follows (nil: no budget).
    public var memoryPlan: MemoryPlan?
    /// How the UNet trades speed for memory.
    public var unetMemory: UNetMemoryMode
    /// Tiled VAE decode (diffusers' enable_tiling semantics, see VAETiling.swift); nil decodes the whole latent at
    /// once. For a TAESD VAE, a non-nil tiling without a plan decodes in bands within the default activation budget.
    public var vaeTiling: VAETiling?
    /// What the tensor pool may hold, live and idle together, while the UNet runs (nil: what the UNet's tensors
    /// are modelled to need for the run's shape and memory mode).
    public var unetTensorBytes: Int?
    /// The same for the VAE decode (nil: the decoder's model for the shape and tiling).
    public var vaeTensorBytes: Int?
    /// The most idle kernel scratch kept between kernels (nil: every buffer is kept for the next call).
    public var retainedScratchBytes: Int?
    /// The scratch bounds of the UNet's products. Not a pool setting: the UNet call binds them for its own
    /// duration (`UNet.callAsFunction(limits:)`, `GemmLimits.current`), so they reach no other stage or run.
    public var unetGemmLimits: GemmLimits = .standard

    /// No budget: the fastest UNet, no tiling, pool limits from the models — what a pipeline runs with by default.
    public init(unetMemory: UNetMemoryMode = .fastest, vaeTiling: VAETiling? = nil) {
        self.unetMemory = unetMemory
        self.vaeTiling = vaeTiling
    }

    /// The run `plan` describes: its UNet mode, VAE tiling, and pool and scratch limits.
    public init(plan: MemoryPlan) {
        memoryPlan = plan
        unetMemory = plan.unetMemory
        vaeTiling = plan.vaeTiling
        unetTensorBytes = plan.unetTensorBytes
        vaeTensorBytes = plan.vaeTensorBytes
        retainedScratchBytes = max(plan.scratch, ProcessMemory.retainedScratchBytes)
        unetGemmLimits = plan.unetGemmLimits
    }
}
