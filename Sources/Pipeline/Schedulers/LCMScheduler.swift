// Latent Consistency Model sampling: diffusers' LCMScheduler semantics (timesteps from
// original_inference_steps, the boundary-condition scalings, fresh generator noise between steps), float32 op by op.
import TiledKernels

public struct LCMScheduler: Scheduler {
    public var kind: SchedulerKind { .lcm }
    public let timesteps: [Float]
    public var initNoiseSigma: Float { 1 }

    let schedule: NoiseSchedule
    let intTimesteps: [Int]
    let prediction: PredictionType
    let timestepScaling: Float
    /// nil: no clipping of the predicted x0 (LCM's default).
    let clipRange: Float?

    public init(config: SchedulerConfig, steps: Int) throws {
        let name = "LCMScheduler"
        try config.reject("thresholding", config.thresholding, scheduler: name)
        schedule = try NoiseSchedule(
            config: config, kind: name, rescaleZeroSNR: config.rescaleBetasZeroSnr ?? false, zeroSNRLast: false)
        prediction = try PredictionType(
            config.predictionType, allowed: [.epsilon, .vPrediction, .sample], scheduler: name)
        timestepScaling = Float(config.timestepScaling ?? 10)
        clipRange = (config.clipSample ?? false) ? Float(config.clipSampleRange ?? 1.0) : nil
        intTimesteps = try Self.consistencyTimesteps(config: config, steps: steps, trainSteps: schedule.numTrainTimesteps)
        timesteps = intTimesteps.map { Float($0) }
    }

    /// LCM's and TCD's `set_timesteps(steps)` (strength 1): the distillation schedule
    /// k−1, 2k−1, …, n−1 with k = n / original_inference_steps, reversed, then `steps` entries at
    /// indices floor(linspace(0, len, steps, endpoint=False)).
    static func consistencyTimesteps(config: SchedulerConfig, steps: Int, trainSteps n: Int) throws -> [Int] {
        let original = config.originalInferenceSteps ?? 50
        guard original >= 1, original <= n else {
            throw SchedulerError.invalidValue(
                field: "original_inference_steps", value: "\(original)", reason: "must be in 1…\(n) (num_train_timesteps)")
        }
        guard steps <= original else {
            throw SchedulerError.invalidValue(
                field: "steps", value: "\(steps)",
                reason: "more than original_inference_steps \(original): the timesteps are a subset of that schedule")
        }
        let k = n / original
        let origin = Array((1...original).map { $0 * k - 1 }.reversed())
        let stride = Double(origin.count) / Double(steps)
        return (0..<steps).map { origin[Int((Double($0) * stride).rounded(.down))] }
    }

    public func scaleModelInput(_ sample: Tensor, stepIndex: Int) -> Tensor { sample }

    /// c_skip = σd² / ((t·s)² + σd²), c_out = t·s / sqrt((t·s)² + σd²) with σd = 0.5, in float32 as torch does.
    static func boundaryScalings(timestep: Int, scaling: Float) -> (skip: Float, out: Float) {
        let sigmaData: Float = 0.5
        let scaled = Float(timestep) * scaling
        let denominator = scaled * scaled + sigmaData * sigmaData
        return (sigmaData * sigmaData / denominator, scaled / denominator.squareRoot())
    }

    /// The model's x0 prediction for `sample` at a timestep with ᾱ = `alphaProd` (float32, torch's op order).
    static func predictedOriginal(_ prediction: PredictionType, output m: Float, sample s: Float,
                                  sqrtAlpha: Float, sqrtBeta: Float) -> Float {
        switch prediction {
        case .epsilon: return (s - sqrtBeta * m) / sqrtAlpha
        case .sample: return m
        case .vPrediction: return sqrtAlpha * s - sqrtBeta * m
        }
    }

    public mutating func step(output: Tensor, stepIndex: Int, sample: Tensor, random: inout TorchRandom) -> Tensor {
        Elementwise.checkSameShape(output, sample)
        let ac = schedule.alphasCumprod
        let t = intTimesteps[stepIndex]
        let isLast = stepIndex == intTimesteps.count - 1
        let alphaProdT = ac[t]
        let sqrtAlpha = alphaProdT.squareRoot()
        let sqrtBeta = (1 - alphaProdT).squareRoot()
        let (cSkip, cOut) = Self.boundaryScalings(timestep: t, scaling: timestepScaling)
        let denoised = Elementwise.zip(output, sample) { m, s in
            var x0 = Self.predictedOriginal(self.prediction, output: m, sample: s, sqrtAlpha: sqrtAlpha, sqrtBeta: sqrtBeta)
            if let r = self.clipRange { x0 = min(max(x0, -r), r) }
            return cOut * x0 + cSkip * s
        }
        if isLast { return denoised }
        // Noise for the next timestep, drawn from the pipeline's generator after the step (diffusers' order).
        let alphaProdPrev = ac[intTimesteps[stepIndex + 1]]
        let sqrtAlphaPrev = alphaProdPrev.squareRoot()
        let sqrtBetaPrev = (1 - alphaProdPrev).squareRoot()
        let noise = random.randn(output.shape)
        return Elementwise.zip(denoised, noise) { d, z in sqrtAlphaPrev * d + sqrtBetaPrev * z }
    }
}
