// Shared pieces of diffusers' schedulers: the training noise schedule (betas → alphas_cumprod in
// torch float32), timestep spacings (numpy), np.interp, and float32 elementwise helpers.
import Foundation
import TiledKernels

/// The training schedule every diffusers scheduler builds in `__init__`, in torch's float32.
struct NoiseSchedule: Codable, Sendable {
    /// The sigma schedulers' init_noise_sigma (Euler, Euler a, K-LMS): σ_max for "linspace"/"trailing"
    /// spacing, else sqrt(σ_max² + 1), as diffusers computes it.
    static func initNoiseSigma(sigmas: [Float], spacing: String) -> Float {
        let maxSigma = sigmas.max() ?? 0
        return spacing == "linspace" || spacing == "trailing" ? maxSigma : (maxSigma * maxSigma + 1).squareRoot()
    }

    /// The sigma schedulers' scale_model_input: sample / sqrt(σ² + 1).
    static func scaleModelInput(_ sample: Tensor, sigma: Float) -> Tensor {
        let d = (sigma * sigma + 1).squareRoot()
        return Elementwise.map(sample) { $0 / d }
    }

    var numTrainTimesteps: Int
    /// `alphas_cumprod`, float32 as torch computes it (cumprod accumulates in double).
    var alphasCumprod: [Float]

    /// `kind` names the scheduler in errors; `zeroSNRLast` sets alphas_cumprod[-1] = 2^-24 after a
    /// zero-terminal-SNR rescale (Euler, Euler-a, DPM do; DDIM does not).
    init(config: SchedulerConfig, kind: String, rescaleZeroSNR: Bool, zeroSNRLast: Bool) throws {
        let n = config.numTrainTimesteps ?? 1000
        guard n >= 2 else {
            throw SchedulerError.invalidValue(field: "num_train_timesteps", value: "\(n)", reason: "must be >= 2")
        }
        numTrainTimesteps = n
        var betas: [Float]
        if let trained = config.trainedBetas {
            guard trained.count == n else {
                throw SchedulerError.invalidValue(
                    field: "trained_betas", value: "\(trained.count) values", reason: "need num_train_timesteps = \(n)")
            }
            betas = trained.map { Float($0) }
        } else {
            let start = config.betaStart ?? 0.0001
            let end = config.betaEnd ?? 0.02
            switch config.betaSchedule ?? "linear" {
            case "linear":
                betas = Self.torchLinspace(start, end, n)
            case "scaled_linear":
                betas = Self.torchLinspace(start.squareRoot(), end.squareRoot(), n).map { $0 * $0 }
            case "squaredcos_cap_v2":
                betas = Self.cosineBetas(n)
            case let other:
                throw SchedulerError.unsupported(field: "beta_schedule", value: other, scheduler: kind)
            }
        }
        if rescaleZeroSNR { betas = Self.rescaleZeroTerminalSNR(betas) }
        alphasCumprod = Self.cumprod(betas.map { 1 - $0 })
        if rescaleZeroSNR && zeroSNRLast { alphasCumprod[n - 1] = 1.0 / 16_777_216.0 }
    }

    /// `((1 - alphas_cumprod) / alphas_cumprod) ** 0.5` in float32, ascending in t.
    var sigmas: [Float] { alphasCumprod.map { ((1 - $0) / $0).squareRoot() } }

    /// torch.linspace(start, end, n, dtype=float32) on CPU: start + step·i for the first half,
    /// end − step·(n−1−i) for the rest, each a fused multiply–add.
    static func torchLinspace(_ startValue: Double, _ endValue: Double, _ n: Int) -> [Float] {
        let start = Float(startValue)
        let end = Float(endValue)
        if n == 1 { return [start] }
        let step = (end - start) / Float(n - 1)
        let half = n / 2
        return (0..<n).map { i in
            i < half ? start.addingProduct(step, Float(i)) : end.addingProduct(-step, Float(n - 1 - i))
        }
    }

    /// torch.cumprod for float32 on CPU (accumulator is double).
    static func cumprod(_ values: [Float]) -> [Float] {
        var acc = 1.0
        return values.map { v in
            acc *= Double(v)
            return Float(acc)
        }
    }

    /// betas_for_alpha_bar with the cosine transform (Python doubles, then float32).
    static func cosineBetas(_ n: Int) -> [Float] {
        func alphaBar(_ t: Double) -> Double {
            let c = cos((t + 0.008) / 1.008 * Double.pi / 2)
            return c * c
        }
        return (0..<n).map { i in
            let t1 = Double(i) / Double(n)
            let t2 = Double(i + 1) / Double(n)
            return Float(min(1 - alphaBar(t2) / alphaBar(t1), 0.999))
        }
    }

    /// diffusers' rescale_zero_terminal_snr, in float32.
    static func rescaleZeroTerminalSNR(_ betas: [Float]) -> [Float] {
        let cumulative = cumprod(betas.map { 1 - $0 })
        var root = cumulative.map { $0.squareRoot() }
        let first = root[0]
        let last = root[root.count - 1]
        for i in root.indices { root[i] -= last }
        let scale = first / (first - last)
        for i in root.indices { root[i] *= scale }
        let bar = root.map { $0 * $0 }
        var alphas = [bar[0]]
        for i in 1..<bar.count { alphas.append(bar[i] / bar[i - 1]) }
        return alphas.map { 1 - $0 }
    }

    // MARK: numpy helpers (float64)

    /// np.linspace(start, stop, num) (endpoint included; last value exactly `stop`).
    static func numpyLinspace(_ start: Double, _ stop: Double, _ num: Int) -> [Double] {
        if num <= 0 { return [] }
        if num == 1 { return [start] }
        let step = (stop - start) / Double(num - 1)
        var values = (0..<num).map { Double($0) * step + start }
        values[num - 1] = stop
        return values
    }

    /// np.arange(start, stop, step) for doubles: length ceil((stop−start)/step), values
    /// start + i·((start + step) − start).
    static func numpyArange(_ start: Double, _ stop: Double, _ step: Double) -> [Double] {
        let length = Int(((stop - start) / step).rounded(.up))
        if length <= 0 { return [] }
        let delta = (start + step) - start
        return (0..<length).map { i in i == 0 ? start : (i == 1 ? start + step : start + Double(i) * delta) }
    }

    /// np.interp(x, arange(len(fp)), fp) in float64.
    static func interp(_ x: Double, _ fp: [Float]) -> Double {
        let n = fp.count
        if x.isNaN { return x }
        if x <= 0 { return Double(fp[0]) }
        if x >= Double(n - 1) { return Double(fp[n - 1]) }
        let j = Int(x.rounded(.down))
        if Double(j) == x { return Double(fp[j]) }
        let slope = Double(fp[j + 1]) - Double(fp[j])
        return slope * (x - Double(j)) + Double(fp[j])
    }

    /// diffusers' `_convert_to_karras` (rho 7, float64): σ_max … σ_min over `steps` points.
    static func karrasSigmas(sigmaMin: Double, sigmaMax: Double, steps: Int) -> [Double] {
        let rho = 7.0
        let minInv = pow(sigmaMin, 1 / rho)
        let maxInv = pow(sigmaMax, 1 / rho)
        return numpyLinspace(0, 1, steps).map { pow(maxInv + $0 * (minInv - maxInv), rho) }
    }

    /// diffusers' `_sigma_to_t`: the fractional training timestep of σ, interpolating log σ
    /// (`logSigmas` = np.log of the float32 training σ, ascending in t).
    static func sigmaToT(_ sigma: Double, logSigmas: [Float]) -> Double {
        let logSigma = log(max(sigma, 1e-10))
        // cumsum(dists >= 0).argmax(): the last index whose log σ is <= logSigma (0 if none).
        var low = 0
        for (i, l) in logSigmas.enumerated() where logSigma - Double(l) >= 0 { low = i }
        low = min(low, logSigmas.count - 2)
        let lowValue = Double(logSigmas[low])
        let highValue = Double(logSigmas[low + 1])
        var w = (lowValue - logSigma) / (lowValue - highValue)
        w = min(max(w, 0), 1)
        return (1 - w) * Double(low) + w * Double(low + 1)
    }

    /// The float32 timesteps of the sigma-based schedulers (LMS, Euler, Euler-a), descending.
    static func sigmaTimesteps(spacing: String, steps: Int, trainSteps: Int, offset: Int, kind: String) throws
        -> [Float]
    {
        switch spacing {
        case "linspace":
            return numpyLinspace(0, Double(trainSteps - 1), steps).map { Float($0) }.reversed()
        case "leading":
            let ratio = trainSteps / steps
            return (0..<steps).reversed().map { Float($0 * ratio) + Float(offset) }
        case "trailing":
            let ratio = Double(trainSteps) / Double(steps)
            return numpyArange(Double(trainSteps), 0, -ratio).map {
                Float($0.rounded(.toNearestOrEven)) - 1
            }
        default:
            throw SchedulerError.unsupported(field: "timestep_spacing", value: spacing, scheduler: kind)
        }
    }
}

/// Float32 elementwise arithmetic on latents, one rounding per torch op.
enum Elementwise {
    @inline(__always)
    static func map(_ a: Tensor, _ f: (Float) -> Float) -> Tensor {
        Tensor(shape: a.shape, data: a.data.map(f))
    }

    @inline(__always)
    static func zip(_ a: Tensor, _ b: Tensor, _ f: (Float, Float) -> Float) -> Tensor {
        precondition(a.count == b.count, "scheduler: shapes \(a.shape) and \(b.shape) differ")
        var out = a.data
        a.withUnsafeBufferPointer { pa in
            b.withUnsafeBufferPointer { pb in
                for i in 0..<pa.count { out[i] = f(pa[i], pb[i]) }
            }
        }
        return Tensor(shape: a.shape, data: out)
    }

    static func checkSameShape(_ a: Tensor, _ b: Tensor) {
        precondition(a.shape == b.shape, "scheduler: model output \(a.shape) and sample \(b.shape) differ")
    }
}

extension SchedulerConfig {
    /// Throws for options the given scheduler class has but this port does not implement.
    func reject(_ field: String, _ value: Bool?, scheduler: String) throws {
        if value == true { throw SchedulerError.unsupported(field: field, value: "true", scheduler: scheduler) }
    }
}
