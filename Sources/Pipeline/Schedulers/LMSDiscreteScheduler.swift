// K-LMS (linear multistep, order 4): diffusers' LMSDiscreteScheduler semantics. The integration
// coefficients are exact integrals of the Lagrange basis polynomials (diffusers integrates the
// same polynomials numerically with scipy.integrate.quad, which is exact for them up to rounding).
import Foundation
import TiledKernels

public struct LMSDiscreteScheduler: Scheduler {
    public var kind: SchedulerKind { .lms }
    public let timesteps: [Float]
    public let initNoiseSigma: Float
    /// σ of each iteration, then 0 (count = timesteps.count + 1).
    public let sigmas: [Float]
    let prediction: PredictionType
    let order = 4
    var derivatives: [[Float]] = []

    public init(config: SchedulerConfig, steps: Int) throws {
        let name = "LMSDiscreteScheduler"
        try config.reject("use_exponential_sigmas", config.useExponentialSigmas, scheduler: name)
        try config.reject("use_beta_sigmas", config.useBetaSigmas, scheduler: name)
        let schedule = try NoiseSchedule(config: config, kind: name, rescaleZeroSNR: false, zeroSNRLast: false)
        prediction = try PredictionType(
            config.predictionType, allowed: [.epsilon, .vPrediction, .sample], scheduler: name)
        let spacing = config.timestepSpacing ?? "linspace"
        var steps32 = try NoiseSchedule.sigmaTimesteps(
            spacing: spacing, steps: steps, trainSteps: schedule.numTrainTimesteps,
            offset: config.stepsOffset ?? 0, kind: name)
        let full = schedule.sigmas
        var spaced = steps32.map { NoiseSchedule.interp(Double($0), full) }
        if config.useKarrasSigmas == true {
            // LMS's _convert_to_karras ignores sigma_min / sigma_max.
            spaced = NoiseSchedule.karrasSigmas(sigmaMin: spaced[spaced.count - 1], sigmaMax: spaced[0], steps: steps)
            let logSigmas = full.map { logf($0) }
            steps32 = spaced.map { Float(NoiseSchedule.sigmaToT($0, logSigmas: logSigmas)) }
        }
        timesteps = steps32
        sigmas = spaced.map { Float($0) } + [0]
        initNoiseSigma = NoiseSchedule.initNoiseSigma(sigmas: sigmas, spacing: spacing)
    }

    public func scaleModelInput(_ sample: Tensor, stepIndex: Int) -> Tensor {
        NoiseSchedule.scaleModelInput(sample, sigma: sigmas[stepIndex])
    }

    /// ∫_{σ[t]}^{σ[t+1]} Π_{k≠current} (τ − σ[t−k]) / (σ[t−current] − σ[t−k]) dτ.
    func lmsCoefficient(order: Int, t: Int, current: Int) -> Double {
        var poly: [Double] = [1]  // coefficients, lowest degree first
        var scale = 1.0
        for k in 0..<order where k != current {
            let root = Double(sigmas[t - k])
            var next = [Double](repeating: 0, count: poly.count + 1)
            for (i, c) in poly.enumerated() {
                next[i + 1] += c
                next[i] -= c * root
            }
            poly = next
            scale *= Double(sigmas[t - current]) - root
        }
        func antiderivative(_ x: Double) -> Double {
            var sum = 0.0
            for i in stride(from: poly.count - 1, through: 0, by: -1) {
                sum = sum * x + poly[i] / Double(i + 1)
            }
            return sum * x
        }
        let a = Double(sigmas[t])
        let b = Double(sigmas[t + 1])
        return (antiderivative(b) - antiderivative(a)) / scale
    }

    public mutating func step(output: Tensor, stepIndex: Int, sample: Tensor, random: inout TorchRandom) -> Tensor {
        Elementwise.checkSameShape(output, sample)
        let sigma = sigmas[stepIndex]
        let s = sample.data
        let m = output.data
        var derivative = s
        for i in s.indices {
            let x0: Float
            switch prediction {
            case .epsilon: x0 = s[i] - sigma * m[i]
            case .vPrediction:
                let d = (sigma * sigma + 1)
                x0 = m[i] * (-sigma / d.squareRoot()) + s[i] / d
            case .sample: x0 = m[i]
            }
            derivative[i] = (s[i] - x0) / sigma
        }
        derivatives.append(derivative)
        if derivatives.count > order { derivatives.removeFirst() }
        let currentOrder = min(stepIndex + 1, order)
        let coefficients = (0..<currentOrder).map {
            Float(lmsCoefficient(order: currentOrder, t: stepIndex, current: $0))
        }
        var sum = [Float](repeating: 0, count: s.count)
        for (j, coefficient) in coefficients.enumerated() {
            let d = derivatives[derivatives.count - 1 - j]
            for i in sum.indices { sum[i] = j == 0 ? coefficient * d[i] : sum[i] + coefficient * d[i] }
        }
        var prev = s
        for i in prev.indices { prev[i] = s[i] + sum[i] }
        return Tensor(shape: sample.shape, data: prev)
    }
}
