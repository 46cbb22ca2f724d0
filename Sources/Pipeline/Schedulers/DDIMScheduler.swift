// DDIM with eta = 0 (deterministic): diffusers' DDIMScheduler semantics, float32 op by op.
import TiledKernels

public struct DDIMScheduler: Scheduler {
    public var kind: SchedulerKind { .ddim }
    public let timesteps: [Float]
    public var initNoiseSigma: Float { 1 }

    let schedule: NoiseSchedule
    let steps: Int
    let intTimesteps: [Int]
    let prediction: PredictionType
    let finalAlphaCumprod: Float
    /// nil: no clipping of the predicted x0.
    let clipRange: Float?

    public init(config: SchedulerConfig, steps: Int) throws {
        let name = "DDIMScheduler"
        try config.reject("thresholding", config.thresholding, scheduler: name)
        schedule = try NoiseSchedule(
            config: config, kind: name, rescaleZeroSNR: config.rescaleBetasZeroSnr ?? false, zeroSNRLast: false)
        self.steps = steps
        prediction = try PredictionType(
            config.predictionType, allowed: [.epsilon, .vPrediction, .sample], scheduler: name)
        finalAlphaCumprod = (config.setAlphaToOne ?? true) ? 1 : schedule.alphasCumprod[0]
        clipRange = (config.clipSample ?? true) ? Float(config.clipSampleRange ?? 1.0) : nil
        let n = schedule.numTrainTimesteps
        switch config.timestepSpacing ?? "leading" {
        case "linspace":
            intTimesteps = NoiseSchedule.numpyLinspace(0, Double(n - 1), steps).map {
                Int($0.rounded(.toNearestOrEven))
            }.reversed()
        case "leading":
            intTimesteps = (0..<steps).reversed().map { $0 * (n / steps) + (config.stepsOffset ?? 0) }
        case "trailing":
            intTimesteps = NoiseSchedule.numpyArange(Double(n), 0, -Double(n) / Double(steps)).map {
                Int($0.rounded(.toNearestOrEven)) - 1
            }
        case let other:
            throw SchedulerError.unsupported(field: "timestep_spacing", value: other, scheduler: name)
        }
        timesteps = intTimesteps.map { Float($0) }
        if let bad = intTimesteps.first(where: { $0 < 0 || $0 >= n }) {
            throw SchedulerError.invalidValue(
                field: "steps", value: "\(steps)",
                reason: "timestep \(bad) is outside 0..<\(n) (steps_offset \(config.stepsOffset ?? 0))")
        }
    }

    public func scaleModelInput(_ sample: Tensor, stepIndex: Int) -> Tensor { sample }

    public mutating func step(output: Tensor, stepIndex: Int, sample: Tensor, random: inout TorchRandom) -> Tensor {
        Elementwise.checkSameShape(output, sample)
        let ac = schedule.alphasCumprod
        let timestep = intTimesteps[stepIndex]
        let prevTimestep = timestep - schedule.numTrainTimesteps / steps
        let alphaProdT = ac[timestep]
        let alphaProdPrev = prevTimestep >= 0 ? ac[prevTimestep] : finalAlphaCumprod
        let betaProdT = 1 - alphaProdT
        let sqrtAlpha = alphaProdT.squareRoot()
        let sqrtBeta = betaProdT.squareRoot()
        let m = output.data
        let s = sample.data
        var x0 = s
        var eps = m
        for i in s.indices {
            switch prediction {
            case .epsilon:
                x0[i] = (s[i] - sqrtBeta * m[i]) / sqrtAlpha
            case .sample:
                x0[i] = m[i]
                eps[i] = (s[i] - sqrtAlpha * m[i]) / sqrtBeta
            case .vPrediction:
                x0[i] = sqrtAlpha * s[i] - sqrtBeta * m[i]
                eps[i] = sqrtAlpha * m[i] + sqrtBeta * s[i]
            }
            if let r = clipRange { x0[i] = min(max(x0[i], -r), r) }
        }
        // eta = 0: std_dev_t = 0 · variance^0.5 = 0.
        let stdDev: Float = 0
        let directionCoeff = (1 - alphaProdPrev - stdDev * stdDev).squareRoot()
        let sqrtAlphaPrev = alphaProdPrev.squareRoot()
        var prev = s
        for i in prev.indices { prev[i] = sqrtAlphaPrev * x0[i] + directionCoeff * eps[i] }
        return Tensor(shape: sample.shape, data: prev)
    }
}
