// KernelBenchmarks: what `sdd bench` reports about the machine — the BLAS core OpenBLAS picked, the BF16
// kernel (AVX512_BF16 or AMX), the threads a GEMM runs on, and the GEMM rates the kernels actually reach here.
import CBLAS
import CKernels
import MMapWeights
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Facts about the compute backend on this machine.
public enum MachineInfo {
    /// OpenBLAS's kernel family (openblas_get_corename: "Cooperlake", "Haswell" …); it follows
    /// OPENBLAS_CORETYPE when that is set when the library loads.
    public static func blasCoreName() -> String {
        guard let name = openblas_get_corename() else { return "unknown" }
        return String(cString: name)
    }

    /// The kernel BF16 products run on here ("avx512bf16", "amx"), or "none" (they run in F32).
    public static func bf16KernelName() -> String { ProductPrecision.bf16Kernel?.rawValue ?? "none" }

    /// Threads a large GEMM runs on: TiledKernels splits each product over this many cores and keeps
    /// OpenBLAS itself at one thread per call (see `BLASThreading`).
    public static func blasThreads() -> Int {
        BLASThreading.ensure()
        return Parallel.cores * Int(max(1, openblas_get_num_threads()))
    }
}

/// Median GFLOP/s of `repeats` timed F32 products C[m, n] = A[m, k] · B[k, n], run the way the kernels run
/// them (split over the cores, OpenBLAS single-threaded per unit), after one untimed warm-up.
public func measureGEMMGFLOPS(m: Int, n: Int, k: Int, repeats: Int) -> Double {
    measureGEMMGFLOPS(m: m, n: n, k: k, transB: false, repeats: repeats, bf16: nil) ?? 0
}

/// Median GFLOP/s of `repeats` timed products C[m, n] = A[m, k] · op(B) (B stored [k, n], or [n, k] with
/// `transB`), split over the cores as the kernels split them, after one untimed warm-up: F32 on OpenBLAS
/// (`bf16` nil), or BF16 on the named kernel whatever `sgemm`'s choice would be — nil when it cannot run here.
public func measureGEMMGFLOPS(m: Int, n: Int, k: Int, transB: Bool, repeats: Int, bf16: BF16Kernel?) -> Double? {
    precondition(m > 0 && n > 0 && k > 0 && repeats > 0, "measureGEMMGFLOPS: m \(m), n \(n), k \(k), repeats \(repeats)")
    let a = UnsafeMutablePointer<Float>.allocate(capacity: m * k)
    let b = UnsafeMutablePointer<Float>.allocate(capacity: k * n)
    let c = UnsafeMutablePointer<Float>.allocate(capacity: m * n)
    defer { a.deallocate(); b.deallocate(); c.deallocate() }
    for i in 0..<(m * k) { a[i] = Float(i % 7) * 0.1 - 0.3 }
    for i in 0..<(k * n) { b[i] = Float(i % 5) * 0.1 - 0.2 }
    let grid = GemmGrid(rows: m, cols: n, depth: k)
    let ldb = transB ? k : n
    let status = UnsafeMutablePointer<Int32>.allocate(capacity: grid.units)  // each unit writes its own
    defer { status.deallocate() }
    status.initialize(repeating: 0, count: grid.units)
    func once() {
        Parallel.forEachUnit(count: grid.units) { u in
            let (r, col) = grid.ranges(u)
            let bUnit = b + (transB ? col.lowerBound * k : col.lowerBound)
            let cUnit = c + r.lowerBound * n + col.lowerBound
            if let kernel = bf16 {
                status[u] = ck_gemm_bf16_using(kernel.ckValue, transB ? 1 : 0, Int64(r.count), Int64(col.count),
                                               Int64(k), 1, a + r.lowerBound * k, Int64(k), bUnit, Int64(ldb), 0,
                                               cUnit, Int64(n))
            } else {
                sgemm(transB: transB, m: r.count, n: col.count, k: k, a: a + r.lowerBound * k, lda: k, b: bUnit,
                      ldb: ldb, beta: 0, c: cUnit, ldc: n)
            }
        }
    }
    if let kernel = bf16, kernel == .amx ? ck_gemm_bf16_amx_available() == 0 : ck_gemm_bf16_available() == 0 {
        return nil
    }
    once()
    if (0..<grid.units).contains(where: { status[$0] != 0 }) { return nil }
    var seconds: [Double] = []
    for _ in 0..<repeats {
        let t0 = monotonicSeconds()
        once()
        seconds.append(monotonicSeconds() - t0)
    }
    seconds.sort()
    let median = seconds[seconds.count / 2]
    return 2 * Double(m) * Double(n) * Double(k) / max(median, 1e-12) / 1e9
}

func monotonicSeconds() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
}

/// One convolution shape for `measureConvSeconds`: [batch, channels, height, width] in, `outChannels` out,
/// a 3×3 stride-1 padding-1 kernel stored as `type`.
public struct ConvBenchmarkShape: Sendable {
    public var batch: Int, channels: Int, outChannels: Int, height: Int, width: Int
    public var type: TensorType
    public init(batch: Int, channels: Int, outChannels: Int, height: Int, width: Int, type: TensorType) {
        self.batch = batch
        self.channels = channels
        self.outChannels = outChannels
        self.height = height
        self.width = width
        self.type = type
    }

    /// Multiply-adds × 2 of the direct convolution (what GFLOP/s figures for convs are quoted against).
    public var flops: Double { 2 * Double(batch * outChannels * height * width) * Double(channels * 9) }
}

/// Median seconds of `repeats` timed 3×3 convolutions of `shape` (after one warm-up), with im2col + GEMM
/// (`winogradTile` nil) or Winograd F(m×m, 3×3) (`winogradTile` m = 2 or 4), on pseudo-random inputs and weights,
/// with products in `precision`.
public func measureConvSeconds(_ shape: ConvBenchmarkShape, winogradTile: Int?, repeats: Int,
                               precision: ProductPrecision = .f32) -> Double {
    let s = shape
    var state: UInt64 = 12345
    func next() -> Float {
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return Float(state >> 40) / Float(1 << 24) - 0.5
    }
    let x = Tensor(shape: [s.batch, s.channels, s.height, s.width],
                   data: (0..<(s.batch * s.channels * s.height * s.width)).map { _ in next() })
    let values = (0..<(s.outChannels * s.channels * 9)).map { _ in next() * 0.1 }
    let weightShape = [s.outChannels, s.channels, 3, 3]
    var weight: Weight
    if s.type == .f32 {
        weight = Weight(shape: weightShape, array: values)
    } else {
        let bytes = Quantizer.quantize(values, to: s.type)
        let box = WeightBox(count: (bytes.count + 3) / 4)
        UnsafeMutableRawPointer(box.pointer.baseAddress!).copyMemory(from: bytes, byteCount: bytes.count)
        weight = Weight(shape: weightShape, type: s.type,
                        bytes: UnsafeRawBufferPointer(start: box.pointer.baseAddress, count: bytes.count), owner: box)
    }
    weight.products = precision
    let bias = Weight(shape: [s.outChannels], array: (0..<s.outChannels).map { _ in next() })
    var limits = GemmLimits.standard
    limits.convAlgorithm = winogradTile == nil ? .im2col : winogradTile == 4 ? .winograd4 : .winograd
    _ = conv2d(x, weight: weight, bias: bias, stride: 1, padding: 1, limits: limits)
    var seconds: [Double] = []
    for _ in 0..<max(1, repeats) {
        let t0 = monotonicSeconds()
        _ = conv2d(x, weight: weight, bias: bias, stride: 1, padding: 1, limits: limits)
        seconds.append(monotonicSeconds() - t0)
    }
    return seconds.sorted()[seconds.count / 2]
}
