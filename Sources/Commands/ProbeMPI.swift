// `hgdpo probe mpi`: checks the MPI collectives hgdpo relies on, with values whose exact results are known, and
// reports what every rank saw. Used by the launch tests and by users checking a new cluster before a long run.
import Distributed
import IO

extension Commands {
    static let probeMPI = CommandSpec(
        ["probe", "mpi"],
        summary: "Check MPI collectives (all-reduce, broadcast, barrier) across the ranks and print a JSON report",
        details: """
            Every rank r contributes x[i] = (r + 1) · (i mod 1000) / 2 (Float and Double, exact in both), so the
            all-reduced sum is W(W+1)/4 · (i mod 1000) on every rank; rank 0 broadcasts y[i] = i mod 4093 − 2046.5.
            The trainer's gradient sum (fixed order ((x_0 + x_1) + x_2) + …, whole and in buckets) is checked bit for bit
            on values whose sum depends on that order.
            Rank 0 prints {"world_size":…,"ranks":[…],"allreduce_float":{…},…,"ok":…}; exit code 1 if any rank saw a
            wrong value. Example: launch/local.sh 4 hgdpo probe mpi
            """,
        options: [.value("--count", "N", "Elements per all-reduce (more than 2^30 tests chunking)", default: "1000003")]
    ) { args in
        let comm = try Communicator.world()
        let count = try args.int("--count", in: 1...(1 << 31))!
        let report = try probeMPI(comm, count: count)
        if comm.isRoot { print(report.json.serialized()) }
        if !report.ok { throw CLIError.invalid("MPI probe found wrong values (see the report above)") }
    }

    struct MPIProbeReport { let json: JSONValue; let ok: Bool }

    static func probeMPI(_ comm: Communicator, count: Int) throws -> MPIProbeReport {
        let w = Double(comm.size)
        let factor = w * (w + 1) / 4
        // All-reduce, Float
        var f = [Float](unsafeUninitializedCapacity: count) { b, n in
            for i in 0..<count { b[i] = Float(comm.rank + 1) * Float(i % 1000) / 2 }; n = count
        }
        try comm.allreduce(&f)
        var badF = 0
        var sumF = 0.0
        for i in 0..<count { if f[i] != Float(factor * Double(i % 1000)) { badF += 1 }; sumF += Double(f[i]) }
        f = []
        // All-reduce, Double
        var d = (0..<count).map { Double(comm.rank + 1) * Double($0 % 1000) / 2 }
        try comm.allreduce(&d)
        var badD = 0
        var sumD = 0.0
        for i in 0..<count { if d[i] != factor * Double(i % 1000) { badD += 1 }; sumD += d[i] }
        d = []
        // The trainer's gradient sum (OrderedSum, BucketedSum): values whose sum depends on the order of the additions
        // (1e16 + 1 rounds back to 1e16), expected bit for bit as ((x_0 + x_1) + x_2) + …, whole and in buckets.
        func x(_ r: Int, _ i: Int) -> Double { [1.0, 1e16, -1e16, 3.0][r % 4] * Double(1 + i % 5) + Double(r / 4) }
        func expected(_ i: Int) -> Double {
            var e = x(0, i)
            for r in 1..<comm.size { e += x(r, i) }
            return e
        }
        var badOrdered = 0, badBucketed = 0
        do {
            let guarded = GuardedCommunicator(comm, timeout: 0)
            let o = UnsafeMutableBufferPointer<Double>.allocate(capacity: count)
            defer { o.deallocate() }
            for i in 0..<count { o[i] = x(comm.rank, i) }
            let whole = try BucketedSum(guarded, buffer: o, bucketElements: 0)
            try whole.finish("the probe's buffer")
            for i in 0..<count where o[i] != expected(i) { badOrdered += 1 }
            // Buckets of a third of the buffer, the tail ones handed out before `finish`.
            for i in 0..<count { o[i] = x(comm.rank, i) }
            let bucketed = try BucketedSum(guarded, buffer: o, bucketElements: count / 3 + 1)
            bucketed.begin()
            bucketed.markFinal(from: count / 2)
            try bucketed.finish("the probe's buffer")
            for i in 0..<count where o[i] != expected(i) { badBucketed += 1 }
        }
        // Broadcast from rank 0
        var y = [Float](repeating: comm.isRoot ? 0 : .nan, count: count)
        if comm.isRoot { for i in 0..<count { y[i] = Float(i % 4093) - 2046.5 } }
        try comm.broadcast(&y)
        var badB = 0
        for i in 0..<count where y[i] != Float(i % 4093) - 2046.5 { badB += 1 }
        try comm.barrier()
        // Gather of blocks of different lengths onto the last rank: rank r sends r + 1 bytes (r·7 + i) mod 251.
        let gathered = try comm.gather((0...comm.rank).map { UInt8((comm.rank * 7 + $0) % 251) }, root: comm.size - 1)
        var badG = 0
        if let gathered {
            badG = gathered.count == comm.size ? 0 : 1
            for (r, block) in gathered.enumerated() where block != (0...r).map({ UInt8((r * 7 + $0) % 251) }) { badG += 1 }
        }
        // Who is where, gathered through an all-reduce of one slot per rank.
        var slots = [Double](repeating: 0, count: 2 * comm.size)
        slots[2 * comm.rank] = Double(comm.localRank); slots[2 * comm.rank + 1] = Double(comm.localSize)
        try comm.allreduce(&slots)
        var gatherBad = [Double(badG)]
        try comm.allreduce(&gatherBad)
        var orderedBad = [Double(badOrdered), Double(badBucketed)]
        try comm.allreduce(&orderedBad)
        var bad = [Double(badF + badD + badB + badG + badOrdered + badBucketed)]
        try comm.allreduce(&bad)
        let hostBytes = try (0..<comm.size).map { r in
            String(decoding: try comm.broadcast(Array(comm.host.utf8), root: r), as: UTF8.self)
        }
        let ranks: [JSONValue] = (0..<comm.size).map { r in
            .object([("rank", .int(r)), ("host", .string(hostBytes[r])),
                     ("local_rank", .int(Int(slots[2 * r]))), ("local_size", .int(Int(slots[2 * r + 1])))])
        }
        let expectedSum = factor * Double((0..<count).reduce(0) { $0 + $1 % 1000 })
        let json = JSONValue.object([
            ("world_size", .int(comm.size)),
            ("ranks", .array(ranks)),
            ("count", .int(count)),
            ("allreduce_float", .object([("sum", .double(sumF)), ("expected_sum", .double(expectedSum)), ("mismatches", .int(badF))])),
            ("allreduce_double", .object([("sum", .double(sumD)), ("expected_sum", .double(expectedSum)), ("mismatches", .int(badD))])),
            ("ordered_sum", .object([("mismatches", .int(Int(orderedBad[0]))), ("bucketed_mismatches", .int(Int(orderedBad[1])))])),
            ("broadcast", .object([("mismatches", .int(badB))])),
            ("gather", .object([("mismatches", .int(Int(gatherBad[0])))])),
            ("mismatches_all_ranks", .int(Int(bad[0]))),
            ("ok", .bool(bad[0] == 0)),
        ])
        return MPIProbeReport(json: json, ok: bad[0] == 0)
    }
}
