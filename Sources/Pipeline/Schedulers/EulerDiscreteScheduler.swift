// Euler (Karras et al. Algorithm 2 with s_churn = 0): diffusers' EulerDiscreteScheduler semantics.
import Foundation
import TiledKernels

public struct EulerDiscreteScheduler: Scheduler {
    public var kind: SchedulerKind { .euler }
    public let timesteps: [Float]
    public let initNoiseSigma: Float
    /// σ of each iteration, then the final σ (0, or σ_min with final_sigmas_type "sigma_min").
    public let sigmas: [Float]
    let prediction: PredictionType

    public init(config: SchedulerConfig, steps: Int) throws {
        let name = "EulerDiscreteScheduler"
        try config.reject("use_exponential_sigmas", config.useExponentialSigmas, scheduler: name)
        try config.reject("use_beta_sigmas", config.useBetaSigmas, scheduler: name)
        if let interpolation = config.interpolationType, interpolation != "linear" {
            throw SchedulerError.unsupported(field: "interpolation_type", value: interpolation, scheduler: name)
        }
        prediction = try PredictionType(
            config.predictionType, allowed: [.epsilon, .vPrediction, .sample], scheduler: name)
        if config.timestepType == "continuous" && prediction == .vPrediction {
            throw SchedulerError.unsupported(field: "timestep_type", value: "continuous", scheduler: name)
        }
        let schedule = try NoiseSchedule(
            config: config, kind: name, rescaleZeroSNR: config.rescaleBetasZeroSnr ?? false, zeroSNRLast: true)
        let spacing = config.timestepSpacing ?? "linspace"
        var steps32 = try NoiseSchedule.sigmaTimesteps(
            spacing: spacing, steps: steps, trainSteps: schedule.numTrainTimesteps,
            offset: config.stepsOffset ?? 0, kind: name)
        let full = schedule.sigmas
        var spaced = steps32.map { NoiseSchedule.interp(Double($0), full) }
        if config.useKarrasSigmas == true {
            spaced = NoiseSchedule.karrasSigmas(
                sigmaMin: config.sigmaMin ?? spaced[spaced.count - 1], sigmaMax: config.sigmaMax ?? spaced[0],
                steps: steps)
            let logSigmas = full.map { logf($0) }
            steps32 = spaced.map { Float(NoiseSchedule.sigmaToT($0, logSigmas: logSigmas)) }
        }
        timesteps = steps32
        let last: Float
        switch config.finalSigmasType ?? "zero" {
        case "zero": last = 0
        case "sigma_min": last = full[0]
        case let other: throw SchedulerError.unsupported(field: "final_sigmas_type", value: other, scheduler: name)
        }
        sigmas = spaced.map { Float($0) } + [last]
        initNoiseSigma = NoiseSchedule.initNoiseSigma(sigmas: sigmas, spacing: spacing)
    }

    public func scaleModelInput(_ sample: Tensor, stepIndex: Int) -> Tensor {
        NoiseSchedule.scaleModelInput(sample, sigma: sigmas[stepIndex])
    }

    public mutating func step(output: Tensor, stepIndex: Int, sample: Tensor, random: inout TorchRandom) -> Tensor {
        Elementwise.checkSameShape(output, sample)
        let sigma = sigmas[stepIndex]
        let sigmaHat = sigma * (0 + 1)  // gamma = 0 (s_churn = 0)
        let dt = sigmas[stepIndex + 1] - sigmaHat
        let d = sigma * sigma + 1
        let vScale = -sigma / d.squareRoot()
        return Elementwise.zip(sample, output) { s, m in
            let x0: Float
            switch self.prediction {
            case .epsilon: x0 = s - sigmaHat * m
            case .vPrediction: x0 = m * vScale + s / d
            case .sample: x0 = m
            }
            let derivative = (s - x0) / sigmaHat
            return s + derivative * dt
        }
    }
}
