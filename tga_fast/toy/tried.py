"""The research log of the miniature world: what each version of the world and of the alignment showed, measured
on the full world (24 concepts, 8 toxic in 7 scenes, 6 colours; 144 fresh evaluation images, 144 toxic
use-requests, 288 benign use-requests, 576 benign requests in all) with research scripts built on the same modules
as the demo (seed 0, 2026-11-30). "DSR a / b" is DSR on toxic images without / with the retrieved text at
inference; "acc" is benign-image exact-match accuracy without the retrieved text. Kept with the code so the
report says how the current design was reached; the demo's own table is measured afresh on every run.

Every entry up to "Conclusion for this world" is a v1 result scored on seed 0's own evaluation images (the set it
was tuned on; seeds 1 and 2 shared its glyphs and concepts): dev results, not evidence. The entries after it are the
v2 protocol's dev seeds (0 and 1), run before the protocol was frozen; the report seeds were never used for them.
"""

TRIED: list[str] = [
    "- **Earlier probes (issue 7)**: frozen random image features (4 tokens), a pair-only pooled term: image/text "
    "cosine 0.4-0.6 -> 0.9-0.97 at the middle layers, toxic-image DSR stayed 0%; the retrieved text at inference "
    "carried the safety.",
    "- **World v1** (4 image tokens: a 2x2-patch CLIP on 32x32 drawings; 6-layer Llama, hidden 96, trained from "
    "scratch): text LLM DSR 100% / benign accuracy 100% on held-out text. 3A locates layers [1, 6] (the refusal "
    "token wins from layer 1 on); 3C: knocking out attention to the toxic word in blocks 1-2 drops DSR to 0%, "
    "blocks 3-4 and 5-6 do nothing (per block: only block 1 matters). The mechanism reads the object word's "
    "*input* state in block 1, because the word's embedding already says 'toxic'.",
    "- v1 baseline (LLaVA two stages): DSR 0% / 38%, no false refusals, acc 87%: the paper's failure.",
    "- v1 TGA as in the paper (caption 'a red gun' as target, layers 1-6, weights 1/4, 1/10, retrieved text in "
    "every prompt): cosine at layers 1-6 rose from 0.22-0.57 to 0.74-0.89, DSR 1% / 44%, acc 66% (91% with the "
    "retrieved text: trained only with 'Retrieved Text: a.' prompts, the prompt without it is out of distribution).",
    "- v1 TGA, other layers and weights: layers 0-6 -> 2% / 60%; layers 0-1 x4 weights -> 3% / 43%; layers 1-6 "
    "x16 weights (training cosine 0.97) -> 0% / 35%; layers 0-2 x16 (cosine 0.91-0.96) -> 4% / 45%. High pooled "
    "cosines, no transfer, as the probes found.",
    "- v1, stage 2 on the projector only (LLM frozen, so no 'image -> comply' shortcut can be learned): baseline "
    "2% / 54% (acc 52%), TGA 6% / 56% (acc 38%); layer 0 only x16: 6% / 65%. The frozen text LLM does not refuse "
    "toxic images either: the shortcut of stage 2 is not the cause; the image tokens are.",
    "- Diagnostic on the text LLM: replacing the 3 caption tokens by 4 copies of their mean embedding still "
    "triggers the refusal 94% (1 copy: 75%), by the object word's embedding 100%. A pooled state *can* carry the "
    "concept in a form the circuit reads.",
    "- v1 TGA with the object word ('gun') as the target, layers 0-1, x16: 1% / 32%: with 4 image tokens the "
    "*mean* is aligned but no single token looks like the object, and the mechanism attends to single tokens.",
    "- **World v1b** (1 image token: one 32x32 patch, so the pooled state is the token; retrieval top-1 92%): "
    "baseline 2% / 38%, acc 89%; TGA as in the paper 11% / 56%, acc 60%; caption target at layers 0-1 x16: 10% / "
    "51% (projector only: 9% / 59%).",
    "- v1b, **object target at layers 0-1 (the states 3C says the mechanism reads), x16**: **73% / 93%**, false "
    "refusals 1%, acc 40% (91% with the retrieved text). The same target at the 3A layers 1-6 (training cosine "
    "0.97): 0% / 59%. With the paper's weights: 3% / 49%. x8: 6% / 38%; layer 0 only: 46% / 78%.",
    "- v1b, object target with the retrieved text in half the training prompts (so neither inference condition is "
    "out of distribution): 67% / 92%, acc 54% (describe 18%, colour 20%, use 89%): the single token becomes the "
    "object word and loses its colour. 500 stage-2 steps: 77% / 90%, acc 56% (baseline at 500 steps: 2% / 30%, "
    "acc 91%).",
    "- v1b, targets that keep the colour: 'red gun' x16: 6% / 54%, acc 89%; 'a red gun' x32 (layer-1 cosine 0.98): "
    "8% / 84%, acc 84%. Diagnostic in that model: writing the caption's mean embedding in place of the image token "
    "gives 60% refusal, the object word 100%, the actual image token 4%: the alignment does not get the token close "
    "enough, and a blend of 'a', 'red' and 'gun' is a weak trigger anyway.",
    "- v1b, other schedules for the object target: the pair term decaying as (1 - t)^2 instead of (1 - t): 47% / "
    "76%, acc 58%. The colour does not come back when the alignment fades early.",
    "- v1b, stage-2 length for the object target (same steps for the baseline): 250 steps: 67% / 92%, acc 54%; 500: "
    "77% / 90%, acc 56% (baseline 2% / 30%, acc 91%); 800: 70% / 83%, acc 69% (colour 50%); 1200: 66% / 87%, acc "
    "76% (colour 72%; baseline 4% / 61%, acc 91%); batch 64 x 600 steps: 60% / 88%, acc 60% (baseline 6% / 58%). "
    "The colour comes back with the steps taken after the alignment has faded, not with more samples; the demo "
    "runs 800 stage-2 steps for all three alignments to stay inside its time budget.",
    "- v1b, 3D measured by `tga_fast.analysis.modality_similarity` on fresh images: after 400 stage-2 steps the "
    "paper's recipe had, without the retrieved text, a cosine at layers 1-6 (0.27-0.40) *below* the baseline's "
    "(0.40-0.51); after 800 steps it is above (0.47-0.81 vs 0.38-0.53). The report gives both prompt conditions.",
    "- Variance: removing an unused token from the vocabulary (so every word has another id and the text LLM another "
    "random start) moved the demo's seed-0 numbers from baseline 3% / 41% (acc 92%), tga_paper 9% / 84% (acc 64%), "
    "tga 70% / 83% (acc 69%) to baseline 8% / 66% (acc 94%), tga_paper 3% / 28% (acc 87%), tga 75% / 80% (acc "
    "89%). The gain of `tga` without the retrieved text (+62 to +67 points) held; the numbers with the retrieved "
    "text and the accuracy gap did not: read them with their intervals and across seeds (below).",
    "- Seeds 0, 1, 2 of the final demo (DSR without / with the retrieved text, benign accuracy without / with): "
    "baseline 8% / 66% (94% / 90%), 2% / 59% (89% / 89%), 2% / 6% (92% / 83%); tga_paper 3% / 28% (87% / 93%), "
    "5% / 53% (85% / 91%), 1% / 29% (82% / 92%); tga 75% / 80% (89% / 93%), 72% / 85% (55% / 89%), 40% / 34% "
    "(89% / 90%). `tga` beats the baseline without the retrieved text by +67, +70 and +38 points on every seed; "
    "with the retrieved text by +14, +26, +28 (short of +30 on every seed, as the baseline also reads the "
    "retrieved toxic word); its accuracy without the retrieved text is within 5 points of the baseline on seeds "
    "0 and 2 and 34 points below on seed 1 (the seed where the image token lost its colour).",
    "- **Conclusion for this world**: the pooled alignment transfers the mechanism only when (1) the pooled state is "
    "what the mechanism reads (one image token, not a mean over several), (2) the target is the concept the "
    "mechanism keys on (the object word, not a caption diluted by attribute words), (3) it acts on the hidden "
    "states the knockout shows are read (here the input states of blocks 1-2, not 3A's whole range), and (4) it "
    "is strong (16x the paper's weights). The price is the attribute detail of the image (colour), unless the "
    "retrieved text supplies it at inference. The demo runs the paper's recipe (`tga_paper`) and this adaptation "
    "(`tga`) side by side.",
    "- **v2 protocol, dev seed 0** (draft sizes: text LLM 500 steps, alignment 150 + 400 steps; 4 image tokens; "
    "13 toxic concepts, 4 held out (blood, cigar, cigarette, knife); library trainer): DSR no / relevant / "
    "irrelevant retrieval: baseline 1% / 26% / 1%, tga_paper (3A layers 1-3) 1% / 4% / 1%, input_word_alignment "
    "6% / 6% / 2%, word_alignment_mid 8% / 4% / 0%; on held-out concepts 0% for every recipe and condition except "
    "the baseline with retrieval (8%). Benign accuracy 60-69% (baseline 69%), false refusals <= 1%. 3D: every "
    "alignment raised the image/text cosine at layers 1-6 (baseline 0.09-0.33, tga_paper 0.55-0.69); 3E: no "
    "window. Trained with the retrieved text, the alignments learned to answer despite it (26% -> 4-6% with "
    "retrieval). One seed took 685 s at 1 thread beside other jobs; the sizes were then cut to 300 / 100 + 250 "
    "steps to fit the demo's 15-minute budget, before any report seed ran.",
    "- **v2 protocol, dev seed 1** (text LLM 300 steps, alignment 100 + 250 steps; held out: beer, blood, cards, "
    "wine): DSR no / relevant / irrelevant retrieval: baseline 3% / 75% / 1%, tga_paper (3A layer 1) 18% / 12% / "
    "0%, input_word_alignment 11% / 27% / 8%, word_alignment_mid 0% / 19% / 0%; on held-out concepts without "
    "retrieval 0%, 10%, 0%, 0%. Benign accuracy 64% (baseline), 48% (tga_paper), 65%, 64%. 640 s for the seed "
    "beside three other jobs. The text LLM's batch was then cut from 48 to 32 and 3D's second prompt condition "
    "(with the retrieved text) dropped, for time; then the protocol was frozen.",
]
