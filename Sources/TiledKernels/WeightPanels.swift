// WeightPanels: typed weights (F16, BF16, ggml block quantizations) as F32 rows for a GEMM — the weight
// itself when it is F32, one dequantized copy in an arena when it is small, panels of rows otherwise.
import CKernels
import MMapWeights
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Scratch bounds of the products over typed weights. A run picks them (the memory planner: the standard ones
/// when they fit its budget, smaller ones when it needs to) and binds them for the duration of its network's
/// forward pass with `GemmLimits.$current.withValue(limits) { … }`: a task-local value, so it travels down the
/// call into every `conv2d` / `linear` beneath without each layer passing it on, and no other run (or thread
/// outside the call) sees it. The public kernels read it once on the calling thread and hand it to their
/// workers as a parameter. Tests also pass limits directly to force many panels / bands.
public struct GemmLimits: Sendable, Equatable {
    /// A non-F32 weight of at most this many values is dequantized whole, once per call (16 MiB of F32).
    public var wholeWeightFloats: Int
    /// Otherwise it is dequantized in panels of rows of at most this many values each (4 MiB of F32),
    /// one panel per unit of work. (1 MiB panels measured 54 vs 69 GFLOP/s on the 1280-channel 3×3 conv:
    /// a 16-row panel is a poor GEMM shape.)
    public var panelFloats: Int
    /// Bound on one im2col band of a convolution, in floats (8 MiB); one band per unit of work (per core).
    /// A Winograd convolution keeps its transformed input and products of one band within the same bound.
    /// A band is at least one output row (one tile row for Winograd), so one row can exceed it.
    public var bandFloats: Int
    /// How 3×3 stride-1 padding-1 convolutions run (tests force one algorithm or the other).
    var convAlgorithm: ConvAlgorithm = .automatic
    /// Whether a typed weight's mapped file pages leave this process's resident set as soon as its rows are
    /// dequantized (`Weight.releaseMappedRows`): a streamed group then never has all its pages resident at once,
    /// only the rows being dequantized; rows read again (the next image, band or lane) refault from the page cache.
    public var releasesMappedWeights = false

    init(wholeWeightFloats: Int, panelFloats: Int, bandFloats: Int, convAlgorithm: ConvAlgorithm = .automatic) {
        self.wholeWeightFloats = wholeWeightFloats
        self.panelFloats = panelFloats
        self.bandFloats = bandFloats
        self.convAlgorithm = convAlgorithm
    }

    /// SDD_CONV_ALGORITHM=im2col or =winograd forces one convolution algorithm (for A/B timing and checks).
    public static let standard = GemmLimits(wholeWeightFloats: 4 << 20, panelFloats: 1 << 20, bandFloats: 1 << 21,
                                            convAlgorithm: ConvAlgorithm.fromEnvironment)

    /// Limits for a tight budget: a whole weight, a panel and a band are each at most `floats` values, so every
    /// scratch buffer a product checks out is about the same size and a pooled arena reused for another kind of
    /// request holds no more than the model counts (see `peakScratchBytes`).
    public static func uniform(floats: Int) -> GemmLimits {
        GemmLimits(wholeWeightFloats: floats, panelFloats: floats, bandFloats: floats,
                   convAlgorithm: ConvAlgorithm.fromEnvironment)
    }

    /// The most typed weight values whose rows are being dequantized at once under these limits (with
    /// `releasesMappedWeights`, what stays resident of a streamed typed weight), and the most pieces they come in:
    /// a whole weight of up to `wholeWeightFloats` values on the calling thread, or one panel, or one Winograd
    /// weight-transform step (64 Ki values), per core.
    public func valuesDequantizedAtOnce(largestWeightValues: Int) -> (values: Int, pieces: Int) {
        (max(min(wholeWeightFloats, largestWeightValues), Parallel.cores * max(min(panelFloats, largestWeightValues), 1 << 16)),
         Parallel.cores + 1)
    }

    /// The limits the products of the current call use: `standard` unless a caller bound others.
    @TaskLocal public static var current: GemmLimits = .standard

    /// The most scratch the products hold at once under these limits, for a network whose largest weight has
    /// `largestWeightFloats` values, whose largest convolution band over a whole image (input channels · kh · kw
    /// · output pixels of one image, for the im2col form) has `largestBandFloats`, and whose widest single band
    /// row (`oneRowBandFloats`: the least a band can be) has that many: a whole dequantized weight held by the
    /// calling thread plus one band per core, or (weights above the whole-weight limit) one shared band plus
    /// one panel per core. Each buffer is rounded as the pool rounds it.
    /// An arena is pooled and keeps its largest size, so with unequal limits (`standard`: 16 MiB whole weight,
    /// 8 MiB bands) a core can run a band in an arena that last held a whole weight, beyond this figure;
    /// with `uniform` limits every buffer is about the same size and this bounds the pool.
    public func peakScratchBytes(largestWeightFloats: Int, largestBandFloats: Int, oneRowBandFloats: Int = 0) -> Int {
        let band = ScratchArena.rounded(min(largestBandFloats, max(bandFloats, oneRowBandFloats)))
        let whole = ScratchArena.rounded(min(largestWeightFloats, wholeWeightFloats)) + Parallel.cores * band
        let panels = largestWeightFloats > wholeWeightFloats
            ? band + Parallel.cores * ScratchArena.rounded(min(panelFloats, largestWeightFloats)) : 0
        return max(whole, panels) * MemoryLayout<Float>.stride
    }
}

/// The algorithm of a 3×3, stride-1, padding-1 convolution.
enum ConvAlgorithm: Sendable {
    /// Winograd or im2col + GEMM by the shape (see `winogradTile`).
    case automatic
    case im2col
    /// Winograd F(2×2, 3×3) whenever the shape allows it, whatever the sizes.
    case winograd
    /// Winograd F(4×4, 3×3) whenever the shape allows it, whatever the sizes.
    case winograd4

    /// SDD_CONV_ALGORITHM (im2col, winograd, winograd4; anything else or unset: automatic).
    static var fromEnvironment: ConvAlgorithm {
        guard let v = getenv("SDD_CONV_ALGORITHM") else { return .automatic }
        switch String(cString: v) {
        case "im2col": return .im2col
        case "winograd": return .winograd
        case "winograd4": return .winograd4
        default: return .automatic
        }
    }
}

/// The F32 rows of a weight during one product.
struct PreparedWeight {
    let weight: Weight
    /// All rows as F32 (row stride `weight.rowLength`), or nil when rows come in panels.
    let whole: UnsafePointer<Float>?
    /// Rows per panel when `whole` is nil.
    let panelRows: Int

    var panels: Int { (weight.rows + panelRows - 1) / panelRows }

    func panelRange(_ p: Int) -> Range<Int> { (p * panelRows)..<min(weight.rows, (p + 1) * panelRows) }
}

/// Runs `body` with `weight`'s rows available as F32: zero-copy for F32; a whole dequantized copy (from a
/// pooled arena) when it has at most `limits.wholeWeightFloats` values; else panels of rows sized by
/// `limits.panelFloats`, cut so there are at least `minPanels` of them when the weight has that many rows.
func withPreparedWeight<R>(_ weight: Weight, limits: GemmLimits, minPanels: Int,
                           _ body: (PreparedWeight) -> R) -> R {
    if weight.type == .f32 {
        return body(PreparedWeight(weight: weight, whole: weight.base, panelRows: max(1, weight.rows)))
    }
    if weight.count <= limits.wholeWeightFloats {
        return ScratchArena.withArena { arena in
            let buffer = arena.floats(weight.count)
            weight.dequantizeRowsInParallel(0..<weight.rows, into: buffer)
            if limits.releasesMappedWeights { weight.releaseMappedRows(0..<weight.rows) }
            return body(PreparedWeight(weight: weight, whole: UnsafePointer(buffer), panelRows: max(1, weight.rows)))
        }
    }
    let rowLength = max(1, weight.rowLength)
    var rows = max(1, limits.panelFloats / rowLength)
    rows = min(rows, max(1, (weight.rows + minPanels - 1) / max(1, minPanels)))
    if rows > 16 { rows = rows / 16 * 16 }
    return body(PreparedWeight(weight: weight, whole: nil, panelRows: rows))
}

extension Weight {
    /// `dequantizeRows` split over the cores for large ranges.
    func dequantizeRowsInParallel(_ range: Range<Int>, into destination: UnsafeMutablePointer<Float>) {
        let rowLength = max(1, self.rowLength)
        Parallel.forEachChunk(count: range.count, minItemsPerChunk: max(1, (1 << 18) / rowLength)) { chunk in
            let rows = (range.lowerBound + chunk.lowerBound)..<(range.lowerBound + chunk.upperBound)
            dequantizeRows(rows, into: destination + chunk.lowerBound * rowLength)
        }
    }

    /// Drops the pages of rows `rows` from this process's resident set when the weight views a mapped file
    /// (madvise DONTNEED on the clean, read-only mapping, widened to whole pages: a later read of these or
    /// neighbouring bytes faults them in again from the page cache). Weights in anonymous memory (LoRA-merged,
    /// converted) are left alone: DONTNEED would zero them.
    /// A fault on a file mapping also maps the pages around it that are in the page cache — the fault-around
    /// window (64 KiB) or, with large page-cache folios (ext4 on Linux 6.18 here), the whole folio, up to 2 MiB
    /// (the PMD size) — so a panel's fault maps back pages of panels released before it: the release reaches
    /// `refaultReachBytes` beyond the rows on each side, within this weight's own bytes. (Measured on a 10 MB
    /// Q8_0 weight in 33 KB panels: 1.2 MB stayed mapped after releasing only the panels' own pages.)
    func releaseMappedRows(_ rows: Range<Int>) {
        guard let file = owner as? MappedFile, let base = file.bytes.baseAddress, let start = bytes.baseAddress,
              self.rows > 0, !rows.isEmpty else { return }
        let rowBytes = bytes.count / self.rows
        let first = start - base
        guard first >= 0, first + bytes.count <= file.size else { return }
        let lo = max(first, first + rows.lowerBound * rowBytes - Weight.refaultReachBytes)
        let hi = min(first + bytes.count, first + rows.upperBound * rowBytes + Weight.refaultReachBytes)
        file.release(lo..<hi)
    }

    /// The most a fault on a file mapping maps around itself (a PMD-sized page-cache folio on x86-64).
    public static let refaultReachBytes = 2 << 20

    /// Runs `body` with this weight's values as F32 (zero-copy for F32, a dequantized copy otherwise);
    /// for the small vectors kernels read whole (biases, norm scales).
    func withFloats<R>(_ body: (UnsafePointer<Float>) -> R) -> R {
        if type == .f32 { return body(base) }
        var copy = [Float](repeating: 0, count: max(1, count))
        return copy.withUnsafeMutableBufferPointer { b in
            dequantizeRows(0..<rows, into: b.baseAddress!)
            return body(UnsafePointer(b.baseAddress!))
        }
    }
}

/// y[r, o] = Σ_k x[r, k] · W[o, k] + beta · y[r, o]: the linear-layer product with a weight of any type.
/// x: [rows, K] (row stride K); weight: [O, K] as rows × rowLength; y: [rows, O] (row stride O).
func multiplyByTransposedWeight(x: UnsafePointer<Float>, rows: Int, weight: Weight,
                                y: UnsafeMutablePointer<Float>, beta: Float, limits: GemmLimits) {
    let outF = weight.rows, inF = weight.rowLength
    if rows == 0 || outF == 0 { return }
    let grid = GemmGrid(rows: rows, cols: outF, depth: inF)
    withPreparedWeight(weight, limits: limits, minPanels: grid.units > 1 ? 2 * Parallel.cores : 1) { prepared in
        if let w = prepared.whole {
            Parallel.forEachUnit(count: grid.units) { u in
                let (r, o) = grid.ranges(u)
                sgemm(transB: true, m: r.count, n: o.count, k: inF, a: x + r.lowerBound * inF, lda: inF,
                      b: w + o.lowerBound * inF, ldb: inF, beta: beta,
                      c: y + r.lowerBound * outF + o.lowerBound, ldc: outF, precision: weight.products)
            }
            return
        }
        // Panels of weight rows: each unit dequantizes one panel and multiplies all rows of x by it.
        Parallel.forEachUnit(count: prepared.panels) { p in
            let o = prepared.panelRange(p)
            ScratchArena.withArena { arena in
                let panel = arena.floats(o.count * inF)
                weight.dequantizeRows(o, into: panel)
                if limits.releasesMappedWeights { weight.releaseMappedRows(o) }
                sgemm(transB: true, m: rows, n: o.count, k: inF, a: x, lda: inF, b: panel, ldb: inF,
                      beta: beta, c: y + o.lowerBound, ldc: outF, precision: weight.products)
            }
        }
    }
}
