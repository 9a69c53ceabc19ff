"""A SmolLM2-135M GGUF whose chat template takes tools, made offline from the bundled one.

SmolLM2's own template never mentions tools, so the embedded engine refuses tools for
it. For the tool tests we copy the file with `gguf` (GGUFReader -> GGUFWriter, every
other key and every tensor as they are) and put a tool template in
`tokenizer.chat_template`: Qwen2.5's Hermes-style one (tools listed in the system turn,
calls as `<tool_call>{"name", "arguments"}</tool_call>`), which SmolLM2's ChatML
tokens already fit, with SmolLM2's default system line. One change from Qwen2.5's: a
tool result is its own `<|im_start|>tool` turn rather than a `<tool_response>` block
in a user turn — measured here, with `<tool_response>` blocks the 135M model copies
them instead of making the call; with tool turns it copies the call.

llama.cpp finds the call format by rendering the template itself (no list of known
templates), then forces the call with a grammar from the tool's schema. The weights
are unchanged: SmolLM2-135M has no judgment, it follows the pattern of a worked
example in the conversation; the tests check the wiring, not the model's choices.
"""

from __future__ import annotations

from pathlib import Path

#: the tool template written into the copy (jinja, as llama.cpp's minja renders it)
TOOL_TEMPLATE = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful AI assistant named SmolLM, trained by Hugging Face' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {{- '<|im_start|>tool\\n' + message.content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


def copy_with_template(source: Path, target: Path, template: str = TOOL_TEMPLATE) -> Path:
    """`source` copied to `target` with only `tokenizer.chat_template` replaced."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    arch_field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    assert arch_field is not None, f"{source} names no architecture"
    partial = target.with_name(target.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), str(arch_field.contents()), endianess=reader.endianess)
    for field in reader.fields.values():
        # the writer adds the architecture and GGUF.* header fields itself
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        if field.name == gguf.Keys.Tokenizer.CHAT_TEMPLATE:
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    writer.add_chat_template(template)
    for tensor in reader.tensors:
        writer.add_tensor_info(
            tensor.name,
            tensor.data.shape,
            tensor.data.dtype,
            tensor.data.nbytes,
            tensor.tensor_type,
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()
    partial.replace(target)  # a run killed mid-write leaves no half file under the name
    return target
