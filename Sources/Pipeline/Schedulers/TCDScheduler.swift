// Trajectory Consistency Distillation sampling: diffusers' TCDScheduler semantics (LCM's timesteps, the
// predicted noised sample at s = floor((1 − η)·t_prev), generator noise scaled by η between steps), float32.
import TiledKernels

public struct TCDScheduler: Scheduler {
    public var kind: SchedulerKind { .tcd }
    public let timesteps: [Float]
    public var initNoiseSigma: Float { 1 }
    /// The stochasticity η (the TCD paper's γ): 0 is deterministic, 1 fully stochastic.
    public let eta: Float

    let schedule: NoiseSchedule
    let intTimesteps: [Int]
    let prediction: PredictionType

    /// TCDScheduler.step's own default η, which the TCD authors recommend for 4–8 steps. (diffusers'
    /// StableDiffusionPipeline passes its own `eta=0.0` unless the caller gives one.)
    public static let defaultEta: Float = 0.3

    public init(config: SchedulerConfig, steps: Int, eta: Float = TCDScheduler.defaultEta) throws {
        let name = "TCDScheduler"
        guard eta.isFinite, (0...1).contains(eta) else {
            throw SchedulerError.invalidValue(field: "eta", value: "\(eta)", reason: "must be in 0…1")
        }
        try config.reject("thresholding", config.thresholding, scheduler: name)
        self.eta = eta
        schedule = try NoiseSchedule(
            config: config, kind: name, rescaleZeroSNR: config.rescaleBetasZeroSnr ?? false, zeroSNRLast: false)
        prediction = try PredictionType(
            config.predictionType, allowed: [.epsilon, .vPrediction, .sample], scheduler: name)
        intTimesteps = try LCMScheduler.consistencyTimesteps(
            config: config, steps: steps, trainSteps: schedule.numTrainTimesteps)
        timesteps = intTimesteps.map { Float($0) }
    }

    public func scaleModelInput(_ sample: Tensor, stepIndex: Int) -> Tensor { sample }

    public mutating func step(output: Tensor, stepIndex: Int, sample: Tensor, random: inout TorchRandom) -> Tensor {
        Elementwise.checkSameShape(output, sample)
        let ac = schedule.alphasCumprod
        let t = intTimesteps[stepIndex]
        let isLast = stepIndex == intTimesteps.count - 1
        let prevT = isLast ? 0 : intTimesteps[stepIndex + 1]
        // torch: floor((1 - eta) * prev_timestep) with the Python double (1 - eta) taken to float32.
        let s = Int((Float(1 - Double(eta)) * Float(prevT)).rounded(.down))
        let alphaProdT = ac[t]
        let betaProdT = 1 - alphaProdT
        let alphaProdPrev = ac[prevT]
        let alphaProdS = ac[s]
        let sqrtAlpha = alphaProdT.squareRoot()
        let sqrtBeta = betaProdT.squareRoot()
        let sqrtAlphaS = alphaProdS.squareRoot()
        let sqrtBetaS = (1 - alphaProdS).squareRoot()
        let noised = Elementwise.zip(output, sample) { m, x in
            let x0: Float
            let eps: Float
            switch self.prediction {
            case .epsilon:
                x0 = (x - sqrtBeta * m) / sqrtAlpha
                eps = m
            case .sample:
                x0 = m
                eps = (x - sqrtAlpha * x0) / sqrtBeta
            case .vPrediction:
                x0 = sqrtAlpha * x - sqrtBeta * m
                eps = sqrtAlpha * m + sqrtBeta * x
            }
            return sqrtAlphaS * x0 + sqrtBetaS * eps
        }
        guard eta > 0, !isLast else { return noised }
        // Fresh noise from the pipeline's generator, drawn after the model output (diffusers' order).
        let ratio = alphaProdPrev / alphaProdS
        let keep = ratio.squareRoot()
        let add = (1 - ratio).squareRoot()
        let noise = random.randn(output.shape)
        return Elementwise.zip(noised, noise) { n, z in keep * n + add * z }
    }
}
