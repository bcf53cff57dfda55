"""The interactive app's logic; `app.py` at the repository root only lays out the UI and wires it to these.

views.py     pure functions: events / tensors -> images and plot tables (no Gradio, no model calls)
sheets.py    contact sheets: every scale of a series in one image, tiles in the output's aspect ratio, labelled
explorer.py  what needs the model beyond one generation: reconstructions, self-correction, interventions, variations
tokenizers.py the tokenizers offered for uploads: the model's own and the general files in assets/tokenizers
vocabulary.py what a shapes model can draw, and the words of a prompt it never saw
inputs.py    validation of every value the UI or the API sends (ValueError with a message a person can act on)
handlers.py  the Gradio callbacks: validate, run, turn every failure into a gr.Error
runtime.py   loading, warm-up, the banner, the Spaces GPU decorator
"""
