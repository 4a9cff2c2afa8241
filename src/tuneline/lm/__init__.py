"""The language-model layer shared by train, evaluate, the registry's pyfunc, the parity check and serve.

One place renders a conversation with the model's own chat template, builds assistant-only labels,
knows the stop tokens, loads a model variant and generates, so what is trained is exactly what is
served (DESIGN §9). Modules: `template` (which template, what it can render), `conversation`
(canonical record -> template messages and tools), `masks` (ids and assistant mask for any
template), `stops` (the stop set), `labels` (truncation and labels), `load`, `generate`,
`toolcalls` (reading a generated tool call back).
"""

import warnings

# peft reads transformers' deprecated `is_gradient_checkpointing` each time it wraps a model: the warning
# names neither tuneline's code nor anything a user can change.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
