// UNetBlockList: the UNet as one list of typed blocks. Each block says what it is (its layout: channels,
// prefix, whether it keeps or takes a skip connection), binds its weights into streaming groups, runs its
// forward, and declares the tensor and scratch bytes it holds for a shape and memory mode. The forward pass,
// the weight streamer and the memory planner all walk the same list (see UNet.layout).

import TiledKernels

/// One block of the UNet as its config describes it, before any weights are bound.
struct UNetBlockLayout: Sendable, Equatable {
    enum Kind: Sendable, Equatable {
        /// Sinusoidal timestep features → linear → SiLU → linear, then the SiLU every resnet adds.
        case timeEmbedding(channels: Int, timeDim: Int)
        case convIn(in: Int, out: Int, kernel: Int)
        /// skipChannels: on the up path, the input is the current map concatenated with the last skip
        /// connection, of this many channels (`in` counts both).
        case resnet(prefix: String, in: Int, out: Int, timeDim: Int, outputScale: Float, skipChannels: Int?)
        case transformer(prefix: String, channels: Int, heads: Int, layers: Int, contextDim: Int)
        case downsample(prefix: String, channels: Int)
        /// Nearest resize to the size of the next skip connection to be taken, then a 3×3 conv.
        case upsample(prefix: String, channels: Int)
        /// conv_norm_out + SiLU, conv_out; the lanes are stacked back into one batch.
        case out(in: Int, out: Int, kernel: Int)
    }

    let kind: Kind
    /// Whether the block's output is stored as a skip connection.
    let keepsSkip: Bool

    init(_ kind: Kind, keepsSkip: Bool = false) {
        self.kind = kind
        self.keepsSkip = keepsSkip
    }
}

/// A block bound to its weights: its streaming groups and its forward pass.
struct UNetBlock {
    enum Layers {
        case timeEmbedding(Linear, Linear)
        case convIn(Conv2d)
        case resnet(ResnetBlock)
        case transformer(SpatialTransformer)
        case downsample(Downsample)
        case upsample(Upsample)
        case out(GroupNormLayer, Conv2d)
    }

    let layout: UNetBlockLayout
    let layers: Layers

    init(binding layout: UNetBlockLayout, weights w: WeightProvider, config: UNetConfig) throws {
        self.layout = layout
        let groups = config.normNumGroups, eps = config.normEps
        switch layout.kind {
        case .timeEmbedding(let c, let timeDim):
            layers = .timeEmbedding(try Linear(w, "time_embedding.linear_1", in: c, out: timeDim),
                                    try Linear(w, "time_embedding.linear_2", in: timeDim, out: timeDim))
        case .convIn(let inC, let outC, let kernel):
            layers = .convIn(try Conv2d(w, "conv_in", in: inC, out: outC, kernel: kernel))
        case .resnet(let p, let inC, let outC, let timeDim, let outputScale, _):
            layers = .resnet(try ResnetBlock(w, p, in: inC, out: outC, timeChannels: timeDim, groups: groups, eps: eps,
                                             outputScale: outputScale))
        case .transformer(let p, let c, let heads, let count, let contextDim):
            layers = .transformer(try SpatialTransformer(w, p, channels: c, heads: heads, layers: count,
                                                         contextDim: contextDim, groups: groups,
                                                         linearProjection: config.useLinearProjection))
        case .downsample(let p, let c):
            layers = .downsample(try Downsample(w, p, channels: c, padding: config.downsamplePadding))
        case .upsample(let p, let c):
            layers = .upsample(try Upsample(w, p, channels: c))
        case .out(let inC, let outC, let kernel):
            layers = .out(try GroupNormLayer(w, "conv_norm_out", channels: inC, groups: groups, eps: eps),
                          try Conv2d(w, "conv_out", in: inC, out: outC, kernel: kernel))
        }
    }

    /// The block's weight groups, in the order its forward runs them (the streaming unit).
    var groups: [[Weight]] {
        switch layers {
        case .timeEmbedding(let l1, let l2): [l1.weights + l2.weights]
        case .convIn(let conv): [conv.weights]
        case .resnet(let r): r.groups
        case .transformer(let t): t.groups
        case .downsample(let d): [d.weights]
        case .upsample(let u): [u.weights]
        case .out(let norm, let conv): [norm.weights + conv.weights]
        }
    }

    /// Runs the block on `state`; `run(part)` streams the block's group `part` of `groups`.
    func forward(_ state: inout UNetRunState, run: GroupRunner) {
        switch layers {
        case .timeEmbedding(let linear1, let linear2):
            let c0 = state.config.blockOutChannels[0]
            let feats = UNet.timestepFeatures(state.timestep, dim: c0, flipSinToCos: state.config.flipSinToCos,
                                              freqShift: Float(state.config.freqShift))
            let tFeatures = Tensor(shape: [state.n, c0], data: Array([[Float]](repeating: feats, count: state.n).joined()))
            let siluTemb = run(0) { silu(linear2(silu(linear1(tFeatures)))) }
            state.tembs = [UNetRunState.lanes(siluTemb, 1, state.n), UNetRunState.lanes(siluTemb, state.itemLanes, state.n)]
        case .convIn(let conv):
            let sample = state.sample
            let input = state.config.centerInputSample
                ? Tensor(shape: sample.shape, data: sample.data.map { 2 * $0 - 1 }) : sample
            var x = UNetRunState.lanes(input, state.laneCount(input), state.n)
            run(0) { for i in x.indices { x[i] = conv(take(&x[i])) } }
            state.x = x
        case .resnet(let resnet):
            var x = state.x
            state.x = []
            let tembs = x.count == 1 ? state.tembs[0] : state.tembs[1]
            if case .resnet(_, _, _, _, _, skipChannels: .some) = layout.kind {
                // Each lane's map and skip meet in a concatenation built when the resnet reaches that lane, and
                // neither outlives it (the peak of the up path).
                var skip = state.skips.removeLast()
                state.x = resnet.forward(lanes: x.count, input: { concatChannels(take(&x[$0]), skip.take(lane: $0)) },
                                         siluTimeEmbedding: tembs, run: run)
            } else {
                state.x = resnet.forward(lanes: x.count, input: { take(&x[$0]) }, siluTimeEmbedding: tembs, run: run)
            }
        case .transformer(let transformer):
            let contexts = state.laneContexts
            transformer.forward(&state.x, contexts: contexts, run: run)
        case .downsample(let ds):
            run(0) { for i in state.x.indices { state.x[i] = ds(take(&state.x[i])) } }
            state.relane()
        case .upsample(let us):
            guard let next = state.skips.last else { return }
            run(0) { for i in state.x.indices { state.x[i] = us(take(&state.x[i]), size: next.spatialSize) } }
            state.relane()
        case .out(let norm, let conv):
            run(0) { for i in state.x.indices { state.x[i] = conv(norm(take(&state.x[i]), silu: true)) } }
            if state.x.count > 1 { state.x = [Tensor.stack(batches: state.x)] }
        }
    }
}

/// What lives across the UNet's blocks during one evaluation: the current maps (one per lane), the skip
/// connections, and the per-lane time embedding and context.
struct UNetRunState {
    let memory: UNetMemoryMode
    let config: UNetConfig
    let sample: Tensor
    let timestep: Float
    /// Batch items.
    let n: Int
    /// Lanes where `memory` runs item by item: one per batch item (else the whole batch is one lane).
    let itemLanes: Int
    /// The current maps, one per lane.
    var x: [Tensor] = []
    var skips: [SkipConnection] = []
    /// silu(time embedding) and the context, as one lane ([0]) and as `itemLanes` lanes ([1]).
    var tembs: [[Tensor]] = [[], []]
    let contexts: [[Tensor]]

    init(sample: Tensor, timestep: Float, context: Tensor, memory: UNetMemoryMode, config: UNetConfig) {
        self.sample = sample
        self.timestep = timestep
        self.memory = memory
        self.config = config
        n = sample.shape[0]
        itemLanes = memory.itemByItem && n > 1 ? n : 1
        contexts = [UNetRunState.lanes(context, 1, n), UNetRunState.lanes(context, itemLanes, n)]
    }

    /// Lanes a map of this size runs in: the lane count follows the maps' size, so a skip connection is
    /// taken on the way up with the lanes it was stored with.
    func laneCount(_ t: Tensor) -> Int {
        t.shape[2] * t.shape[3] >= memory.itemByItemMinimumPixels ? itemLanes : 1
    }

    /// `t` as `count` lanes: itself, or one slice per batch item.
    static func lanes(_ t: Tensor, _ count: Int, _ n: Int) -> [Tensor] {
        count == 1 ? [t] : (0..<n).map { t.slice(batch: $0..<($0 + 1)) }
    }

    /// The current maps as the lanes their size asks for: split the batch or stack the items.
    mutating func relane() {
        let count = laneCount(x[0])
        if x.count == count { return }
        x = count == 1 ? [Tensor.stack(batches: x)] : UNetRunState.lanes(take(&x[0]), count, n)
    }

    /// The context for the current lanes.
    var laneContexts: [Tensor] { x.count == 1 ? contexts[0] : contexts[1] }
}

/// The memory planner's walk over the block list: the shapes and the tensors alive between blocks, as
/// `UNetRunState` holds them during a real evaluation.
struct UNetPlanWalk {
    let n: Int
    let itemLanes: Int
    let memory: UNetMemoryMode
    /// Tokens and width of the context (CLIP: 77 × cross_attention_dim).
    let contextTokens: Int
    var channels: Int
    var height: Int
    var width: Int
    /// Bytes and map size of each skip connection alive.
    var skips: [(bytes: Int, height: Int, width: Int)] = []
    /// Whether the current maps are the last skip connection's storage (F32 skips share it; its bytes then
    /// count once, in `skips`, and the blocks cannot free them).
    var xShared = false
    /// Bytes alive across blocks: the time embedding and the context split into item lanes.
    var persistent = 0

    init(batch: Int, channels: Int, height: Int, width: Int, contextTokens: Int, contextDim: Int,
         memory: UNetMemoryMode) {
        n = batch
        itemLanes = memory.itemByItem && batch > 1 ? batch : 1
        self.memory = memory
        self.contextTokens = contextTokens
        self.channels = channels
        self.height = height
        self.width = width
        persistent = itemLanes > 1 ? batch * contextTokens * contextDim * 4 : 0
    }

    var pixels: Int { height * width }
    var skipBytes: Int { skips.reduce(0) { $0 + $1.bytes } }
    /// Lanes maps of `pixels` run in (see `UNetRunState.laneCount`).
    func lanes(_ pixels: Int) -> Int { pixels >= memory.itemByItemMinimumPixels ? itemLanes : 1 }
}

extension UNetBlockLayout {
    /// The most bytes of tensors alive at once while this block runs (its skip connection included), given the
    /// walk's state before it; advances `walk` past the block. Derived from `UNetBlock.forward` and the layers
    /// it calls, op by op: every layer writes a fresh tensor, an argument is freed once the call it was passed
    /// to returns, a `let` lives to the end of its scope, and lanes run one at a time while the others hold
    /// their inputs (pending) or results (done). Caller-held tensors (the sample and context) are not counted.
    func peakBytes(_ walk: inout UNetPlanWalk) -> Int {
        let f = 4  // bytes of an F32 activation
        let n = walk.n, p = walk.pixels
        let lanes = walk.lanes(p), m = n / lanes
        /// Peak over the lanes of a loop where lane i's work peaks at `current` while the lanes before it hold
        /// `done` bytes each and those after it `pending` (linear in i, so the first or last lane is the peak).
        func laneLoop(done: Int, pending: Int, current: Int) -> Int {
            max((lanes - 1) * pending, (lanes - 1) * done) + current
        }
        var peak: Int
        switch kind {
        case .timeEmbedding(let c, let timeDim):
            // The features, then linear_1 / SiLU / linear_2 / SiLU two at a time; then the item-lane copies.
            let features = n * c * f, embedding = n * timeDim * f
            peak = walk.persistent + features + 2 * embedding
            walk.persistent += embedding * (walk.itemLanes > 1 ? 2 : 1)
        case .convIn(let inC, let outC, _):
            // The sample is the caller's; item lanes copy it. Each lane's input is freed once conv read it.
            let laneIn = lanes > 1 ? m * inC * p * f : 0, laneOut = m * outC * p * f
            peak = walk.persistent + laneLoop(done: laneOut, pending: laneIn, current: laneIn + laneOut)
            walk.channels = outC
            walk.xShared = false
        case .resnet(_, let inC, let outC, _, let outputScale, let skipChannels):
            let unit = m * p * f  // one channel of one lane
            let shortcut = inC != outC
            let xLane = walk.xShared ? 0 : inC  // the input's channels this block can free
            let residual = shortcut ? outC : xLane
            var pending1 = xLane * unit
            var inputPhase = 0
            if let skipC = skipChannels {
                // The skip leaves the list; each lane's map and skip lane are concatenated when its turn comes.
                let popped = walk.skips.removeLast()
                let skipElement = popped.bytes / max(n * skipC * p, 1)
                let prevC = inC - skipC
                pending1 = m * p * (prevC * f + skipC * skipElement)
                // F16 bits widening beside the map, then map + skip + their concatenation.
                inputPhase = max(m * p * (prevC * f + skipC * skipElement + skipC * f), 2 * inC * unit)
            }
            let phases = [
                inputPhase,
                (xLane + (shortcut ? outC : 0)) * unit,  // shortcut(x)
                (xLane + (shortcut ? outC : 0) + inC) * unit,  // norm1(x)
                (residual + inC + outC) * unit,  // conv1(norm1(x))
                (residual + 2 * outC) * unit + m * outC * f,  // + time projection (a copy where not in place)
            ]
            let group1 = laneLoop(done: (outC + residual) * unit, pending: pending1, current: phases.max() ?? 0)
            // norm2, conv2, residual add (and the output scale's copy).
            let group2 = laneLoop(done: outC * unit, pending: (outC + residual) * unit,
                                  current: (residual + 2 * outC + (outputScale != 1 ? outC : 0)) * unit)
            peak = walk.persistent + max(group1, group2)
            walk.channels = outC
            walk.xShared = false
        case .transformer(_, let c, _, let layers, _):
            // The maps stay while the tokens (one tensor per lane) go through the blocks.
            let lane = m * c * p * f, all = n * c * p * f
            var groups = [2 * all + 2 * lane,  // norm, proj_in, to tokens
                          2 * all + lane]  // proj_out, back to maps, residual add
            if layers > 0 {
                let rows = m * p, tile = TransformerBlock.feedForwardTile
                let kv = 2 * m * walk.contextTokens * c * f
                groups += [
                    2 * all + 5 * lane,  // self-attention: norm1, q, k, v, attention output
                    2 * all + 3 * lane + kv,  // cross-attention: k and v from the context
                    // feed-forward: norm3 and the 8× and 4× hidden layers, whole or in tiles (+ the copy added into)
                    rows <= tile ? 2 * all + 12 * lane : 2 * all + lane + 13 * tile * c * f,
                ]
            }
            peak = walk.persistent + (groups.max() ?? 0)
            walk.xShared = false
        case .downsample(_, let c):
            let outH = (walk.height + 1) / 2, outW = (walk.width + 1) / 2
            let laneIn = walk.xShared ? 0 : m * c * p * f, laneOut = m * c * outH * outW * f
            let relane = walk.lanes(outH * outW) != lanes ? 2 * n * c * outH * outW * f : 0
            peak = walk.persistent + max(laneLoop(done: laneOut, pending: laneIn, current: laneIn + laneOut), relane)
            walk.height = outH
            walk.width = outW
            walk.xShared = false
        case .upsample(_, let c):
            let target = walk.skips.last.map { ($0.height, $0.width) } ?? (2 * walk.height, 2 * walk.width)
            let laneIn = m * c * p * f, laneOut = m * c * target.0 * target.1 * f
            let relane = walk.lanes(target.0 * target.1) != lanes ? 2 * n * c * target.0 * target.1 * f : 0
            // The input stays while its resized copy and the conv output exist.
            peak = walk.persistent + max(laneLoop(done: laneOut, pending: laneIn, current: laneIn + 2 * laneOut), relane)
            (walk.height, walk.width) = target
        case .out(let inC, let outC, _):
            let laneIn = m * inC * p * f, laneOut = m * outC * p * f
            let stack = lanes > 1 ? 2 * n * outC * p * f : 0
            peak = walk.persistent + max(laneLoop(done: laneOut, pending: laneIn, current: laneIn + max(laneIn, laneOut)),
                                         stack)
            walk.channels = outC
        }
        peak += walk.skipBytes
        if keepsSkip {
            let x = n * walk.channels * walk.pixels * f
            if walk.memory.halfPrecisionSkips {
                // F16 bits beside the maps they are made from.
                peak = max(peak, walk.skipBytes + walk.persistent + x + x / 2)
                walk.skips.append((x / 2, walk.height, walk.width))
            } else {
                walk.skips.append((x, walk.height, walk.width))
                walk.xShared = true
            }
        }
        return peak
    }

    /// The block's kernel scratch at its largest under `limits` (see `GemmLimits.peakScratchBytes`): its largest
    /// weight, and its widest 3×3 convolution band over one image of `height` × `width` output pixels, as the
    /// kernel cuts it for the algorithm it picks (`GemmLimits.conv3x3BandFloats`: at least one row).
    func scratchBytes(height: Int, width: Int, limits: GemmLimits) -> Int {
        var weight = 0
        var convs: [(c: Int, o: Int)] = []
        switch kind {
        case .timeEmbedding(let c, let timeDim):
            weight = max(c, timeDim) * timeDim
        case .convIn(let inC, let outC, let k), .out(let inC, let outC, let k):
            weight = outC * inC * k * k
            if k > 1 { convs = [(inC, outC)] }
        case .resnet(_, let inC, let outC, let timeDim, _, _):
            weight = max(outC * inC * 9, outC * outC * 9, timeDim * outC)
            convs = [(inC, outC), (outC, outC)]
        case .transformer(_, let c, _, _, let contextDim):
            weight = max(8 * c * c, c * contextDim)
        case .downsample(_, let c), .upsample(_, let c):
            weight = c * c * 9
            convs = [(c, c)]
        }
        var image = 0, oneRow = 0
        for conv in convs {
            let band = limits.conv3x3BandFloats(channels: conv.c, outChannels: conv.o, height: height, width: width)
            image = max(image, band.image)
            oneRow = max(oneRow, band.oneRow)
        }
        return limits.peakScratchBytes(largestWeightFloats: weight, largestBandFloats: image, oneRowBandFloats: oneRow)
    }
}

extension UNet {
    /// The tensor bytes of one evaluation on [batch, in_channels, latentHeight, latentWidth] with a context of
    /// `contextTokens` tokens, block by block (`perBlock[i]`: block i's peak) and at its largest (`peak`);
    /// `scratch`: the largest block's kernel scratch under `limits`. Walks `layout` as the forward pass walks the
    /// blocks.
    static func plannedBytes(_ layout: [UNetBlockLayout], batch: Int, latentHeight: Int, latentWidth: Int,
                             contextTokens: Int, memory: UNetMemoryMode, limits: GemmLimits = .standard)
        -> (peak: Int, perBlock: [Int], scratch: Int) {
        var inC = 4, contextDim = 0
        for block in layout {
            if case .convIn(let c, _, _) = block.kind { inC = c }
            if case .transformer(_, _, _, _, let d) = block.kind { contextDim = max(contextDim, d) }
        }
        var walk = UNetPlanWalk(batch: batch, channels: inC, height: latentHeight, width: latentWidth,
                                contextTokens: contextTokens, contextDim: contextDim, memory: memory)
        var perBlock: [Int] = []
        var scratch = 0
        for block in layout {
            let before = (walk.height, walk.width)
            perBlock.append(block.peakBytes(&walk))
            scratch = max(scratch, block.scratchBytes(height: max(before.0, walk.height),
                                                      width: max(before.1, walk.width), limits: limits))
        }
        return (perBlock.max() ?? 0, perBlock, scratch)
    }
}
