// DPM-Solver++ / DPM-Solver multistep (orders 1–3, midpoint or heun): diffusers'
// DPMSolverMultistepScheduler semantics. SD's "DPM++ 2M" is dpmsolver++, order 2, midpoint.
import Foundation
import TiledKernels

public struct DPMSolverMultistepScheduler: Scheduler {
    public var kind: SchedulerKind { .dpmSolverMultistep }
    public let timesteps: [Float]
    public var initNoiseSigma: Float { 1 }
    /// σ of each iteration, then the final σ (0 with final_sigmas_type "zero").
    public let sigmas: [Float]
    let prediction: PredictionType
    let solverOrder: Int
    let dataPrediction: Bool  // dpmsolver++ (x0) vs dpmsolver (ε)
    let heun: Bool
    let lowerOrderFinal: Bool
    let eulerAtFinal: Bool
    let finalSigmaZero: Bool
    var modelOutputs: [[Float]?]
    var lowerOrderNums = 0

    public init(config: SchedulerConfig, steps: Int) throws {
        let name = "DPMSolverMultistepScheduler"
        try config.reject("thresholding", config.thresholding, scheduler: name)
        try config.reject("use_exponential_sigmas", config.useExponentialSigmas, scheduler: name)
        try config.reject("use_beta_sigmas", config.useBetaSigmas, scheduler: name)
        try config.reject("use_lu_lambdas", config.useLuLambdas, scheduler: name)
        try config.reject("use_flow_sigmas", config.useFlowSigmas, scheduler: name)
        if let v = config.varianceType, v == "learned" || v == "learned_range" {
            throw SchedulerError.unsupported(field: "variance_type", value: v, scheduler: name)
        }
        prediction = try PredictionType(
            config.predictionType, allowed: [.epsilon, .vPrediction, .sample], scheduler: name)
        switch config.algorithmType ?? "dpmsolver++" {
        case "dpmsolver++", "deis": dataPrediction = true  // diffusers maps deis → dpmsolver++
        case "dpmsolver": dataPrediction = false
        case let other: throw SchedulerError.unsupported(field: "algorithm_type", value: other, scheduler: name)
        }
        switch config.solverType ?? "midpoint" {
        case "midpoint", "logrho", "bh1", "bh2": heun = false  // diffusers maps the others → midpoint
        case "heun": heun = true
        case let other: throw SchedulerError.unsupported(field: "solver_type", value: other, scheduler: name)
        }
        solverOrder = config.solverOrder ?? 2
        guard (1...3).contains(solverOrder) else {
            throw SchedulerError.unsupported(field: "solver_order", value: "\(solverOrder)", scheduler: name)
        }
        let finalType = config.finalSigmasType ?? "zero"
        guard finalType == "zero" || finalType == "sigma_min" else {
            throw SchedulerError.unsupported(field: "final_sigmas_type", value: finalType, scheduler: name)
        }
        if !dataPrediction && finalType == "zero" {
            throw SchedulerError.invalidValue(
                field: "final_sigmas_type", value: "zero",
                reason: "not supported with algorithm_type dpmsolver (use sigma_min), as in diffusers")
        }
        finalSigmaZero = finalType == "zero"
        lowerOrderFinal = config.lowerOrderFinal ?? true
        eulerAtFinal = config.eulerAtFinal ?? false

        let schedule = try NoiseSchedule(
            config: config, kind: name, rescaleZeroSNR: config.rescaleBetasZeroSnr ?? false, zeroSNRLast: true)
        let n = schedule.numTrainTimesteps
        // lambda_min_clipped: searchsorted(flip(lambda_t), clip) counts how many λ lie below it.
        var lastTimestep = n
        if let clip = config.lambdaMinClipped, clip > -Double.infinity {
            let lambdas = schedule.alphasCumprod.map { ac -> Float in
                let alpha = ac.squareRoot()
                let sigma = (1 - ac).squareRoot()
                return logf(alpha) - logf(sigma)
            }
            let clipped = lambdas.reversed().filter { Double($0) < clip }.count
            lastTimestep = n - clipped
        }
        var ints: [Int]
        switch config.timestepSpacing ?? "linspace" {
        case "linspace":
            ints = NoiseSchedule.numpyLinspace(0, Double(lastTimestep - 1), steps + 1).map {
                Int($0.rounded(.toNearestOrEven))
            }.reversed().dropLast()
        case "leading":
            let ratio = lastTimestep / (steps + 1)
            ints = (1...steps).reversed().map { $0 * ratio + (config.stepsOffset ?? 0) }
        case "trailing":
            ints = NoiseSchedule.numpyArange(Double(lastTimestep), 0, -Double(n) / Double(steps)).map {
                Int($0.rounded(.toNearestOrEven)) - 1
            }
        case let other:
            throw SchedulerError.unsupported(field: "timestep_spacing", value: other, scheduler: name)
        }
        let full = schedule.sigmas
        let last: Float = finalSigmaZero ? 0 : full[0]
        var spaced: [Double]
        if config.useKarrasSigmas == true {
            // DPM's _convert_to_karras spans the whole training range (no sigma_min/max keys).
            spaced = NoiseSchedule.karrasSigmas(sigmaMin: Double(full[0]), sigmaMax: Double(full[n - 1]), steps: steps)
            let logSigmas = full.map { logf($0) }
            let cosine = (config.betaSchedule ?? "linear") == "squaredcos_cap_v2"
            ints = spaced.map {
                let t = NoiseSchedule.sigmaToT($0, logSigmas: logSigmas)
                // np.int64 of the (rounded unless cosine) float timestep truncates toward zero.
                return Int(cosine ? t : t.rounded(.toNearestOrEven))
            }
        } else {
            spaced = ints.map { NoiseSchedule.interp(Double($0), full) }
        }
        sigmas = spaced.map { Float($0) } + [last]
        timesteps = ints.map { Float($0) }
        modelOutputs = [[Float]?](repeating: nil, count: solverOrder)
    }

    public func scaleModelInput(_ sample: Tensor, stepIndex: Int) -> Tensor { sample }

    /// (α_t, σ_t) of a σ: 1/sqrt(σ²+1), σ·α_t.
    private func alphaSigma(_ sigma: Float) -> (Float, Float) {
        let alpha = 1 / (sigma * sigma + 1).squareRoot()
        return (alpha, sigma * alpha)
    }

    private func lambda(_ a: Float, _ s: Float) -> Float { logf(a) - logf(s) }

    public mutating func step(output: Tensor, stepIndex: Int, sample: Tensor, random: inout TorchRandom) -> Tensor {
        Elementwise.checkSameShape(output, sample)
        let count = timesteps.count
        let isLast = stepIndex == count - 1
        let lowerFinal = isLast && (eulerAtFinal || (lowerOrderFinal && count < 15) || finalSigmaZero)
        let lowerSecond = stepIndex == count - 2 && lowerOrderFinal && count < 15

        let converted = convert(output.data, sample.data, sigma: sigmas[stepIndex])
        for i in 0..<(solverOrder - 1) { modelOutputs[i] = modelOutputs[i + 1] }
        modelOutputs[solverOrder - 1] = converted

        let prev: [Float]
        if solverOrder == 1 || lowerOrderNums < 1 || lowerFinal {
            prev = firstOrder(converted, sample.data, stepIndex)
        } else if solverOrder == 2 || lowerOrderNums < 2 || lowerSecond {
            prev = secondOrder(sample.data, stepIndex)
        } else {
            prev = thirdOrder(sample.data, stepIndex)
        }
        if lowerOrderNums < solverOrder { lowerOrderNums += 1 }
        return Tensor(shape: sample.shape, data: prev)
    }

    /// convert_model_output: x0 prediction (dpmsolver++) or ε prediction (dpmsolver).
    private func convert(_ m: [Float], _ s: [Float], sigma: Float) -> [Float] {
        let (alphaT, sigmaT) = alphaSigma(sigma)
        var out = m
        for i in m.indices {
            if dataPrediction {
                switch prediction {
                case .epsilon: out[i] = (s[i] - sigmaT * m[i]) / alphaT
                case .sample: out[i] = m[i]
                case .vPrediction: out[i] = alphaT * s[i] - sigmaT * m[i]
                }
            } else {
                switch prediction {
                case .epsilon: out[i] = m[i]
                case .sample: out[i] = (s[i] - alphaT * m[i]) / sigmaT
                case .vPrediction: out[i] = alphaT * m[i] + sigmaT * s[i]
                }
            }
        }
        return out
    }

    private func firstOrder(_ m: [Float], _ s: [Float], _ index: Int) -> [Float] {
        let (alphaT, sigmaT) = alphaSigma(sigmas[index + 1])
        let (alphaS, sigmaS) = alphaSigma(sigmas[index])
        let h = lambda(alphaT, sigmaT) - lambda(alphaS, sigmaS)
        var out = s
        if dataPrediction {
            let c0 = sigmaT / sigmaS
            let c1 = alphaT * (expf(-h) - 1.0)
            for i in s.indices { out[i] = c0 * s[i] - c1 * m[i] }
        } else {
            let c0 = alphaT / alphaS
            let c1 = sigmaT * (expf(h) - 1.0)
            for i in s.indices { out[i] = c0 * s[i] - c1 * m[i] }
        }
        return out
    }

    private func secondOrder(_ s: [Float], _ index: Int) -> [Float] {
        let (alphaT, sigmaT) = alphaSigma(sigmas[index + 1])
        let (alphaS0, sigmaS0) = alphaSigma(sigmas[index])
        let (alphaS1, sigmaS1) = alphaSigma(sigmas[index - 1])
        let lambdaT = lambda(alphaT, sigmaT)
        let lambdaS0 = lambda(alphaS0, sigmaS0)
        let lambdaS1 = lambda(alphaS1, sigmaS1)
        let m0 = modelOutputs[solverOrder - 1] ?? []
        let m1 = modelOutputs[solverOrder - 2] ?? m0
        let h = lambdaT - lambdaS0
        let h0 = lambdaS0 - lambdaS1
        let r0 = h0 / h
        let invR0 = 1.0 / r0
        var out = s
        let c0: Float
        let c1: Float
        let c2: Float
        if dataPrediction {
            c0 = sigmaT / sigmaS0
            c1 = alphaT * (expf(-h) - 1.0)
            c2 = heun ? alphaT * ((expf(-h) - 1.0) / h + 1.0) : 0.5 * (alphaT * (expf(-h) - 1.0))
            for i in s.indices {
                let d1 = invR0 * (m0[i] - m1[i])
                out[i] = heun ? c0 * s[i] - c1 * m0[i] + c2 * d1 : c0 * s[i] - c1 * m0[i] - c2 * d1
            }
        } else {
            c0 = alphaT / alphaS0
            c1 = sigmaT * (expf(h) - 1.0)
            c2 = heun ? sigmaT * ((expf(h) - 1.0) / h - 1.0) : 0.5 * (sigmaT * (expf(h) - 1.0))
            for i in s.indices {
                let d1 = invR0 * (m0[i] - m1[i])
                out[i] = c0 * s[i] - c1 * m0[i] - c2 * d1
            }
        }
        return out
    }

    private func thirdOrder(_ s: [Float], _ index: Int) -> [Float] {
        let (alphaT, sigmaT) = alphaSigma(sigmas[index + 1])
        let (alphaS0, sigmaS0) = alphaSigma(sigmas[index])
        let (alphaS1, sigmaS1) = alphaSigma(sigmas[index - 1])
        let (alphaS2, sigmaS2) = alphaSigma(sigmas[index - 2])
        let lambdaT = lambda(alphaT, sigmaT)
        let lambdaS0 = lambda(alphaS0, sigmaS0)
        let lambdaS1 = lambda(alphaS1, sigmaS1)
        let lambdaS2 = lambda(alphaS2, sigmaS2)
        let m0 = modelOutputs[solverOrder - 1] ?? []
        let m1 = modelOutputs[solverOrder - 2] ?? m0
        let m2 = modelOutputs[solverOrder - 3] ?? m1
        let h = lambdaT - lambdaS0
        let h0 = lambdaS0 - lambdaS1
        let h1 = lambdaS1 - lambdaS2
        let r0 = h0 / h
        let r1 = h1 / h
        let invR0 = 1.0 / r0
        let invR1 = 1.0 / r1
        let k1 = r0 / (r0 + r1)
        let k2 = 1.0 / (r0 + r1)
        var out = s
        if dataPrediction {
            let c0 = sigmaT / sigmaS0
            let c1 = alphaT * (expf(-h) - 1.0)
            let c2 = alphaT * ((expf(-h) - 1.0) / h + 1.0)
            let c3 = alphaT * ((expf(-h) - 1.0 + h) / (h * h) - 0.5)
            for i in s.indices {
                let d10 = invR0 * (m0[i] - m1[i])
                let d11 = invR1 * (m1[i] - m2[i])
                let d1 = d10 + k1 * (d10 - d11)
                let d2 = k2 * (d10 - d11)
                out[i] = c0 * s[i] - c1 * m0[i] + c2 * d1 - c3 * d2
            }
        } else {
            let c0 = alphaT / alphaS0
            let c1 = sigmaT * (expf(h) - 1.0)
            let c2 = sigmaT * ((expf(h) - 1.0) / h - 1.0)
            let c3 = sigmaT * ((expf(h) - 1.0 - h) / (h * h) - 0.5)
            for i in s.indices {
                let d10 = invR0 * (m0[i] - m1[i])
                let d11 = invR1 * (m1[i] - m2[i])
                let d1 = d10 + k1 * (d10 - d11)
                let d2 = k2 * (d10 - d11)
                out[i] = c0 * s[i] - c1 * m0[i] - c2 * d1 - c3 * d2
            }
        }
        return out
    }
}
