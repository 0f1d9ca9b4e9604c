// Counter-based random numbers: Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011).
// Ref: Random123 philox.h; known-answer vectors from Random123's kat_vectors (checked in TensorsTests).
//
// A draw is a pure function of (seed, stream, index): the noise and timestep of global sample i do not depend on
// which rank draws them, in which order, or in how many pieces. Counter layout: words 0–1 hold the element index,
// words 2–3 the stream; the key is the seed.

/// The Philox4x32 block function with 10 rounds.
public struct Philox4x32: Sendable, Equatable {
    public let key: SIMD2<UInt32>

    public init(key: SIMD2<UInt32>) { self.key = key }
    public init(seed: UInt64) { self.key = SIMD2(UInt32(truncatingIfNeeded: seed), UInt32(truncatingIfNeeded: seed >> 32)) }

    @inline(__always)
    public func block(_ counter: SIMD4<UInt32>) -> SIMD4<UInt32> {
        var c = counter
        var k0 = key.x, k1 = key.y
        for round in 0..<10 {
            if round > 0 { k0 &+= 0x9E37_79B9; k1 &+= 0xBB67_AE85 }   // Weyl key schedule, bumped between rounds
            let p0 = UInt64(0xD251_1F53) &* UInt64(c.x)
            let p1 = UInt64(0xCD9E_8D57) &* UInt64(c.z)
            c = SIMD4(UInt32(truncatingIfNeeded: p1 >> 32) ^ c.y ^ k0, UInt32(truncatingIfNeeded: p1),
                      UInt32(truncatingIfNeeded: p0 >> 32) ^ c.w ^ k1, UInt32(truncatingIfNeeded: p0))
        }
        return c
    }
}

/// One stream of counter-based random numbers. Element `i` of a stream is always the same number, whatever was drawn
/// before it; distinct streams (see `substream`) are independent.
public struct CounterRNG: Sendable, Equatable {
    public let seed: UInt64
    public let stream: UInt64
    private let philox: Philox4x32

    public init(seed: UInt64, stream: UInt64 = 0) {
        self.seed = seed
        self.stream = stream
        self.philox = Philox4x32(seed: seed)
    }

    /// A stream derived from this one and a path of components, e.g. `rng.substream(Purpose.noise, epoch, position)`.
    /// Derivation is a SplitMix64 hash chain, so nearby paths give unrelated streams.
    public func substream(_ components: UInt64...) -> CounterRNG {
        var h = stream
        for c in components { h = CounterRNG.splitmix64(h ^ CounterRNG.splitmix64(c &+ 0x632B_E59B_D9B4_E019)) }
        return CounterRNG(seed: seed, stream: h)
    }

    @inline(__always)
    static func splitmix64(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// The four 32-bit words of counter block `blockIndex`.
    @inline(__always)
    public func block(_ blockIndex: UInt64) -> SIMD4<UInt32> {
        philox.block(SIMD4(UInt32(truncatingIfNeeded: blockIndex), UInt32(truncatingIfNeeded: blockIndex >> 32),
                           UInt32(truncatingIfNeeded: stream), UInt32(truncatingIfNeeded: stream >> 32)))
    }

    // MARK: - Scalars

    /// Uniform in [0, 1) with 24 random bits: element `index` is word `index % 4` of block `index / 4`.
    @inline(__always)
    public func uniform(_ index: UInt64) -> Float {
        let b = block(index >> 2)
        return Float(b[Int(index & 3)] >> 8) * 0x1p-24
    }

    /// Standard normal: element `index` is the cosine (even) or sine (odd) half of a Box–Muller pair made from
    /// block `index / 2`, with 53-bit uniforms in double precision.
    @inline(__always)
    public func normal(_ index: UInt64) -> Float {
        let (z0, z1) = boxMuller(block(index >> 1))
        return index & 1 == 0 ? z0 : z1
    }

    /// Uniform integer in [0, bound): element `index` uses block `index` (64 bits, multiply-shift; bias < bound/2^64).
    @inline(__always)
    public func integer(_ index: UInt64, below bound: Int) -> Int {
        precondition(bound > 0, "CounterRNG.integer: bound must be positive")
        let b = block(index)
        let u = UInt64(b.x) | UInt64(b.y) << 32
        return Int(u.multipliedFullWidth(by: UInt64(bound)).high)
    }

    @inline(__always)
    private func boxMuller(_ b: SIMD4<UInt32>) -> (Float, Float) {
        let a = (UInt64(b.x) | UInt64(b.y) << 32) >> 11      // 53 bits
        let c = (UInt64(b.z) | UInt64(b.w) << 32) >> 11
        let u1 = (Double(a) + 0.5) * 0x1p-53                  // (0, 1): log is finite
        let u2 = Double(c) * 0x1p-53
        let r = (-2 * _log(u1)).squareRoot()
        let theta = 2 * Double.pi * u2
        return (Float(r * _cos(theta)), Float(r * _sin(theta)))
    }

    // MARK: - Buffers

    /// Fills `out[j]` with `normal(offset + j)`; the result does not depend on how a tensor is split across calls.
    public func fillNormal(_ out: UnsafeMutableBufferPointer<Float>, offset: UInt64 = 0, scale: Float = 1) {
        let n = out.count
        guard n > 0, let p = out.baseAddress else { return }
        var j = 0
        if offset & 1 == 1 { p[0] = normal(offset) * scale; j = 1 }
        while j + 1 < n {
            let (z0, z1) = boxMuller(block((offset + UInt64(j)) >> 1))
            p[j] = z0 * scale; p[j + 1] = z1 * scale
            j += 2
        }
        if j < n { p[j] = normal(offset + UInt64(j)) * scale }
    }

    /// Fills `out[j]` with `uniform(offset + j)`.
    public func fillUniform(_ out: UnsafeMutableBufferPointer<Float>, offset: UInt64 = 0) {
        for j in 0..<out.count { out[j] = uniform(offset + UInt64(j)) }
    }

    public func normals(_ count: Int, offset: UInt64 = 0) -> [Float] {
        [Float](unsafeUninitializedCapacity: count) { buf, initialized in
            fillNormal(buf, offset: offset); initialized = count
        }
    }
}

// Glibc's libm, named so the module needs no Foundation import.
@_silgen_name("log") private func _log(_ x: Double) -> Double
@_silgen_name("cos") private func _cos(_ x: Double) -> Double
@_silgen_name("sin") private func _sin(_ x: Double) -> Double
