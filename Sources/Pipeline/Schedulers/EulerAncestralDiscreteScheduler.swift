// Euler ancestral: diffusers' EulerAncestralDiscreteScheduler semantics; draws torch.randn noise
// (latent-shaped) from the generator at every step, as diffusers does.
import TiledKernels

public struct EulerAncestralDiscreteScheduler: Scheduler {
    public var kind: SchedulerKind { .eulerAncestral }
    public let timesteps: [Float]
    public let initNoiseSigma: Float
    /// σ of each iteration, then 0.
    public let sigmas: [Float]
    let prediction: PredictionType

    public init(config: SchedulerConfig, steps: Int) throws {
        let name = "EulerAncestralDiscreteScheduler"
        prediction = try PredictionType(config.predictionType, allowed: [.epsilon, .vPrediction], scheduler: name)
        let schedule = try NoiseSchedule(
            config: config, kind: name, rescaleZeroSNR: config.rescaleBetasZeroSnr ?? false, zeroSNRLast: true)
        let spacing = config.timestepSpacing ?? "linspace"
        timesteps = try NoiseSchedule.sigmaTimesteps(
            spacing: spacing, steps: steps, trainSteps: schedule.numTrainTimesteps,
            offset: config.stepsOffset ?? 0, kind: name)
        let full = schedule.sigmas
        sigmas = timesteps.map { Float(NoiseSchedule.interp(Double($0), full)) } + [0]
        initNoiseSigma = NoiseSchedule.initNoiseSigma(sigmas: sigmas, spacing: spacing)
    }

    public func scaleModelInput(_ sample: Tensor, stepIndex: Int) -> Tensor {
        NoiseSchedule.scaleModelInput(sample, sigma: sigmas[stepIndex])
    }

    public mutating func step(output: Tensor, stepIndex: Int, sample: Tensor, random: inout TorchRandom) -> Tensor {
        Elementwise.checkSameShape(output, sample)
        let sigma = sigmas[stepIndex]
        let from = sigma
        let to = sigmas[stepIndex + 1]
        let sigmaUp = (to * to * (from * from - to * to) / (from * from)).squareRoot()
        let sigmaDown = (to * to - sigmaUp * sigmaUp).squareRoot()
        let dt = sigmaDown - sigma
        let d = sigma * sigma + 1
        let vScale = -sigma / d.squareRoot()
        let prev = Elementwise.zip(sample, output) { s, m in
            let x0: Float
            switch self.prediction {
            case .vPrediction: x0 = m * vScale + s / d
            default: x0 = s - sigma * m
            }
            let derivative = (s - x0) / sigma
            return s + derivative * dt
        }
        let noise = random.randn(output.shape)
        return Elementwise.zip(prev, noise) { p, n in p + n * sigmaUp }
    }
}
