// Reference initialisation and parameter export for `hgdpo make-model`, which writes random-weight text encoders
// where no real weights can be had. The weights are drawn as transformers initialises a fresh CLIPTextModel
// (so activations keep the scale a trained model has, and a pipeline built on them stays finite), from our
// counter-based RNG (same seed, same weights; not torch's generator).
// Ref: transformers models/clip/modeling_clip.py, CLIPPreTrainedModel._init_weights (initializer_factor 1):
//   token and position embeddings N(0, 0.02); q/k/v_proj N(0, D^-1/2 · (2L)^-1/2); out_proj N(0, D^-1/2);
//   fc1 N(0, (2D)^-1/2); fc2 N(0, D^-1/2 · (2L)^-1/2); every Linear bias 0; LayerNorm weight 1, bias 0.
// One deviation: final_layer_norm.bias is −0.1 + N(0, 0.02), not 0. With weight 1 and bias 0 every token's hidden
// state would have mean exactly 0, and the web UI's emphasis (PromptWeighting.applyEmphasis) divides by the mean of
// the hidden states: weighted prompts would get an arbitrary, rounding-dependent scale. Trained CLIPs have a
// non-zero mean there too.
import IO
import NN
import Tensors

extension CLIPTextModel {
    /// Draws every weight as transformers' `_init_weights` does for a new CLIPTextModel (see the file header).
    public func initializeAsTransformers(seed: UInt64) {
        let rng = CounterRNG(seed: seed)
        let D = Float(config.hiddenSize), L = Float(config.numHiddenLayers)
        let inProjStd = 1 / D.squareRoot() / (2 * L).squareRoot()
        let outProjStd = 1 / D.squareRoot()
        let fcStd = 1 / (2 * D).squareRoot()
        for (i, e) in weights.table.entries.enumerated() {
            let buf = weights.fp32(e)
            let s = rng.substream(UInt64(i))
            let key = e.key
            if key == "final_layer_norm.bias" {
                s.fillNormal(buf, scale: 0.02)
                for j in 0..<buf.count { buf[j] -= 0.1 }
            } else if key.hasSuffix(".bias") {
                buf.update(repeating: 0)
            } else if key.contains("layer_norm") {
                buf.update(repeating: 1)
            } else if key.hasPrefix("embeddings.") {
                s.fillNormal(buf, scale: 0.02)
            } else if key.hasSuffix("out_proj.weight") {
                s.fillNormal(buf, scale: outProjStd)
            } else if key.hasSuffix("fc1.weight") {
                s.fillNormal(buf, scale: fcStd)
            } else {   // q_proj, k_proj, v_proj, fc2
                s.fillNormal(buf, scale: inProjStd)
            }
        }
    }
}
