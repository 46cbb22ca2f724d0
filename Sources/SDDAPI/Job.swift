// Job: what the daemon says about one job (POST /v1/jobs, GET /v1/jobs, GET /v1/jobs/{id}).

/// Where a job is in its life. `finished`, `failed` and `canceled` are final.
public enum JobState: String, Codable, Sendable, CaseIterable {
    case queued, running, finished, failed, canceled

    /// Whether the job will not change any more.
    public var isFinal: Bool { self == .finished || self == .failed || self == .canceled }
}

/// Step progress of a running (or finished) job.
public struct JobProgress: Codable, Sendable, Equatable {
    /// Denoising steps done, 0…total.
    public var step: Int
    /// Denoising steps in all.
    public var total: Int
    /// Estimated seconds until the last step is done (from the mean step time so far); nil before the first step.
    public var etaSeconds: Double?

    public init(step: Int, total: Int, etaSeconds: Double? = nil) {
        self.step = step
        self.total = total
        self.etaSeconds = etaSeconds
    }

    enum CodingKeys: String, CodingKey {
        case step, total
        case etaSeconds = "eta_seconds"
    }
}

/// One job as the API shows it. Times are seconds since the Unix epoch (UTC), fractional.
public struct Job: Codable, Sendable, Equatable, Identifiable {
    /// 16 lowercase hex characters (see `JobID`).
    public var id: String
    public var state: JobState
    /// Place in the queue while queued: 1 = runs next. nil otherwise.
    public var position: Int?
    /// The uid that submitted the job (SO_PEERCRED); only it and root can see the job. For a job submitted on the
    /// token-protected TCP listener it is 4294967295 ((uid_t)−1, which no process has) and `ownerName` names the owner.
    public var owner: UInt32
    /// The token NAME that submitted the job on the TCP listener (only requests with one of that NAME's tokens,
    /// and root on the socket, can see it); nil for jobs submitted on the Unix socket.
    public var ownerName: String?
    /// When the daemon accepted the job (seconds since the epoch).
    public var createdAt: Double
    /// When the worker (last) started it; nil while queued.
    public var startedAt: Double?
    /// When it reached a final state; nil before.
    public var finishedAt: Double?
    /// The request with every default resolved (seed, size, scheduler, …), so it can be rerun exactly.
    /// `width`/`height` stay nil only if the model could not be read when the job was accepted.
    public var settings: JobRequest
    /// Step progress; nil while queued.
    public var progress: JobProgress?
    /// Images ready to fetch at /v1/jobs/{id}/images/{n}, n = 0..<images. 0 until finished.
    public var images: Int
    /// Why the job failed (state `failed`), or `canceled` for canceled jobs; nil otherwise.
    public var error: APIError?

    public init(id: String, state: JobState, position: Int? = nil, owner: UInt32, createdAt: Double,
                startedAt: Double? = nil, finishedAt: Double? = nil, settings: JobRequest,
                progress: JobProgress? = nil, images: Int = 0, error: APIError? = nil, ownerName: String? = nil) {
        self.id = id
        self.ownerName = ownerName
        self.state = state
        self.position = position
        self.owner = owner
        self.createdAt = createdAt
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.settings = settings
        self.progress = progress
        self.images = images
        self.error = error
    }

    enum CodingKeys: String, CodingKey {
        case id, state, position, owner
        case ownerName = "owner_name"
        case createdAt = "created_at"
        case startedAt = "started_at"
        case finishedAt = "finished_at"
        case settings, progress, images, error
    }
}

/// GET /v1/jobs: the caller's jobs (every job for root), oldest first.
public struct JobList: Codable, Sendable, Equatable {
    public var jobs: [Job]
    public init(jobs: [Job]) { self.jobs = jobs }
}
