// Gemm: the one place TiledKernels calls OpenBLAS's row-major single-precision GEMM.
// Every product in the module (linear, conv bands, attention tiles) goes through `sgemm`.
import CBLAS
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// C[m, n] = alpha · op(A)[m, k] · op(B)[k, n] + beta · C, all row-major.
/// `transA` / `transB` say that A is stored [k, m] / B is stored [n, k]; `lda`, `ldb`, `ldc` are row strides.
/// Zero-sized products are handled here (BLAS rejects leading dimensions of 0).
@inline(__always)
func sgemm(
    transA: Bool = false, transB: Bool = false,
    m: Int, n: Int, k: Int,
    alpha: Float = 1,
    a: UnsafePointer<Float>, lda: Int,
    b: UnsafePointer<Float>, ldb: Int,
    beta: Float,
    c: UnsafeMutablePointer<Float>, ldc: Int
) {
    if m == 0 || n == 0 { return }
    if k == 0 {
        for i in 0..<m {
            let row = c + i * ldc
            for j in 0..<n { row[j] = beta == 0 ? 0 : beta * row[j] }
        }
        return
    }
    let limit = Int(Int32.max)
    precondition(m <= limit && n <= limit && k <= limit && lda <= limit && ldb <= limit && ldc <= limit,
                 "sgemm: dimensions exceed 32-bit BLAS indices (m \(m), n \(n), k \(k))")
    cblas_sgemm(CblasRowMajor,
                transA ? CblasTrans : CblasNoTrans,
                transB ? CblasTrans : CblasNoTrans,
                blasint(m), blasint(n), blasint(k),
                alpha, a, blasint(lda), b, blasint(ldb),
                beta, c, blasint(ldc))
}

/// Runs `body` with OpenBLAS confined to its calling thread, for kernels that split independent tiles across
/// cores themselves (two thread pools on the same cores spin against each other). Nested or concurrent uses
/// share one limit: the first entrant lowers OpenBLAS to 1 thread, the last one out restores its count.
func withSingleThreadedBLAS<R>(_ body: () -> R) -> R {
    BLASThreadLimit.shared.enter()
    defer { BLASThreadLimit.shared.leave() }
    return body()
}

private final class BLASThreadLimit: @unchecked Sendable {
    static let shared = BLASThreadLimit()
    private var mutex = pthread_mutex_t()
    private var holders = 0
    private var savedThreads: Int32 = 1

    private init() { pthread_mutex_init(&mutex, nil) }

    func enter() {
        pthread_mutex_lock(&mutex)
        if holders == 0 {
            savedThreads = openblas_get_num_threads()
            if savedThreads > 1 { openblas_set_num_threads(1) }
        }
        holders += 1
        pthread_mutex_unlock(&mutex)
    }

    func leave() {
        pthread_mutex_lock(&mutex)
        holders -= 1
        if holders == 0 && savedThreads > 1 { openblas_set_num_threads(savedThreads) }
        pthread_mutex_unlock(&mutex)
    }
}
