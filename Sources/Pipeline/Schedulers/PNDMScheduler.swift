// PNDM (pseudo linear multistep) with optional Runge–Kutta warm-up: diffusers' PNDMScheduler
// semantics (skip_prk_steps = true is SD 1.x's default, giving PLMS with steps + 1 evaluations).
import TiledKernels

public struct PNDMScheduler: Scheduler {
    public var kind: SchedulerKind { .pndm }
    public let timesteps: [Float]
    public var initNoiseSigma: Float { 1 }

    let schedule: NoiseSchedule
    let steps: Int
    let skipPRK: Bool
    let prediction: PredictionType
    let finalAlphaCumprod: Float
    let prkTimesteps: [Int]
    let intTimesteps: [Int]
    // Mutable state, as in diffusers.
    var counter = 0
    var ets: [[Float]] = []
    var curModelOutput: [Float]?
    var curSample: [Float]?

    public init(config: SchedulerConfig, steps: Int) throws {
        let name = "PNDMScheduler"
        schedule = try NoiseSchedule(config: config, kind: name, rescaleZeroSNR: false, zeroSNRLast: false)
        self.steps = steps
        skipPRK = config.skipPrkSteps ?? false
        prediction = try PredictionType(config.predictionType, allowed: [.epsilon, .vPrediction], scheduler: name)
        finalAlphaCumprod = (config.setAlphaToOne ?? false) ? 1 : schedule.alphasCumprod[0]
        let n = schedule.numTrainTimesteps
        let offset = config.stepsOffset ?? 0
        // Ascending `_timesteps`.
        var base: [Int]
        switch config.timestepSpacing ?? "leading" {
        case "linspace":
            base = NoiseSchedule.numpyLinspace(0, Double(n - 1), steps).map { Int($0.rounded(.toNearestOrEven)) }
        case "leading":
            base = (0..<steps).map { $0 * (n / steps) + offset }
        case "trailing":
            base = NoiseSchedule.numpyArange(Double(n), 0, -Double(n) / Double(steps)).reversed().map {
                Int($0.rounded(.toNearestOrEven)) - 1
            }
        case let other:
            throw SchedulerError.unsupported(field: "timestep_spacing", value: other, scheduler: name)
        }
        var prk: [Int] = []
        var plms: [Int]
        if skipPRK {
            // concatenate([ts[:-1], ts[-2:-1], ts[-1:]])[::-1]: the second-to-last timestep twice.
            plms = Array(base.dropLast()) + Array(base.dropLast().suffix(1)) + Array(base.suffix(1))
            plms.reverse()
        } else {
            guard base.count >= 4 else {
                throw SchedulerError.invalidValue(
                    field: "steps", value: "\(steps)", reason: "PNDM without skip_prk_steps needs at least 4 steps")
            }
            let half = n / steps / 2
            var tail: [Int] = []
            for t in base.suffix(4) { tail.append(t); tail.append(t + half) }
            let repeated = tail.dropLast().flatMap { [$0, $0] }
            prk = Array(repeated.dropFirst().dropLast().reversed())
            plms = Array(base.dropLast(3).reversed())
        }
        prkTimesteps = prk
        intTimesteps = prk + plms
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
        let t = intTimesteps[stepIndex]
        if counter < prkTimesteps.count && !skipPRK {
            return stepPRK(output.data, timestep: t, sample: sample)
        }
        return stepPLMS(output.data, timestep: t, sample: sample)
    }

    private mutating func stepPRK(_ modelOutput: [Float], timestep: Int, sample: Tensor) -> Tensor {
        let n = schedule.numTrainTimesteps
        let diffToPrev = counter % 2 != 0 ? 0 : n / steps / 2
        let prevTimestep = timestep - diffToPrev
        let t = prkTimesteps[counter / 4 * 4]
        var output = modelOutput
        let sixth = Float(1.0 / 6.0)
        let third = Float(1.0 / 3.0)
        switch counter % 4 {
        case 0:
            curModelOutput = accumulate(curModelOutput, modelOutput, sixth)
            ets.append(modelOutput)
            curSample = sample.data
        case 1, 2:
            curModelOutput = accumulate(curModelOutput, modelOutput, third)
        default:
            let current = curModelOutput ?? [Float](repeating: 0, count: output.count)
            for i in output.indices { output[i] = current[i] + sixth * modelOutput[i] }
            curModelOutput = nil
        }
        let base = curSample ?? sample.data
        let prev = previousSample(base, t, prevTimestep, output)
        counter += 1
        return Tensor(shape: sample.shape, data: prev)
    }

    /// `cur += c * x` where cur starts as the integer 0 (so the first add is exact).
    private func accumulate(_ current: [Float]?, _ x: [Float], _ c: Float) -> [Float] {
        guard var cur = current else { return x.map { c * $0 } }
        for i in cur.indices { cur[i] += c * x[i] }
        return cur
    }

    private mutating func stepPLMS(_ modelOutput: [Float], timestep: Int, sample: Tensor) -> Tensor {
        let ratio = schedule.numTrainTimesteps / steps
        var timestep = timestep
        var prevTimestep = timestep - ratio
        if counter != 1 {
            ets = Array(ets.suffix(3))
            ets.append(modelOutput)
        } else {
            prevTimestep = timestep
            timestep = timestep + ratio
        }
        var output = modelOutput
        var x = sample.data
        let count = output.count
        let e = ets
        if e.count == 1 && counter == 0 {
            curSample = sample.data
        } else if e.count == 1 && counter == 1 {
            let last = e[e.count - 1]
            for i in 0..<count { output[i] = (modelOutput[i] + last[i]) / 2 }
            x = curSample ?? sample.data
            curSample = nil
        } else if e.count == 2 {
            let (a, b) = (e[1], e[0])
            for i in 0..<count { output[i] = (3 * a[i] - b[i]) / 2 }
        } else if e.count == 3 {
            let (a, b, c) = (e[2], e[1], e[0])
            for i in 0..<count { output[i] = (23 * a[i] - 16 * b[i] + 5 * c[i]) / 12 }
        } else {
            let (a, b, c, d) = (e[e.count - 1], e[e.count - 2], e[e.count - 3], e[e.count - 4])
            let k = Float(1.0 / 24.0)
            for i in 0..<count { output[i] = k * (55 * a[i] - 59 * b[i] + 37 * c[i] - 9 * d[i]) }
        }
        let prev = previousSample(x, timestep, prevTimestep, output)
        counter += 1
        return Tensor(shape: sample.shape, data: prev)
    }

    /// diffusers' `_get_prev_sample` (formula (9) of the PNDM paper), float32 op by op.
    private func previousSample(_ sample: [Float], _ timestep: Int, _ prevTimestep: Int, _ modelOutput: [Float])
        -> [Float]
    {
        let ac = schedule.alphasCumprod
        let alphaProdT = ac[min(max(timestep, 0), ac.count - 1)]
        let alphaProdPrev = prevTimestep >= 0 ? ac[min(prevTimestep, ac.count - 1)] : finalAlphaCumprod
        let betaProdT = 1 - alphaProdT
        let betaProdPrev = 1 - alphaProdPrev
        var output = modelOutput
        if prediction == .vPrediction {
            let a = alphaProdT.squareRoot()
            let b = betaProdT.squareRoot()
            for i in output.indices { output[i] = a * modelOutput[i] + b * sample[i] }
        }
        let sampleCoeff = (alphaProdPrev / alphaProdT).squareRoot()
        let denom = alphaProdT * betaProdPrev.squareRoot() + (alphaProdT * betaProdT * alphaProdPrev).squareRoot()
        let diff = alphaProdPrev - alphaProdT
        var prev = sample
        for i in prev.indices { prev[i] = sampleCoeff * sample[i] - diff * output[i] / denom }
        return prev
    }
}
