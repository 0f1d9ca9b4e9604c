// What the trainer asks of an optimizer: an update over the flat trained buffer (the LoRA, or with --train unet the
// U-Net's parameters) and its state for checkpoints.
import IO

public protocol Optimizer: AnyObject {
    /// Updates taken so far (bias correction uses it; checkpoints keep it).
    var stepCount: Int { get }
    /// One update of `params` (flat) from `grads` (same layout) at learning rate `lr`.
    func update(params: UnsafeMutablePointer<Float>, grads: UnsafePointer<Float>, count: Int, lr: Float)
    /// The state as named tensors (and metadata), so a checkpoint restores it exactly.
    func stateEntries() -> (tensors: [SafeTensorsEntry], metadata: [String: String])
    /// Restores what `stateEntries` wrote; a file that does not fit (other size, other optimizer) is an error naming it.
    func loadState(from file: SafeTensorsFile) throws
}
