// A TypeScript/JavaScript agent's view of `traceguard serve`: the official openai package with
// nothing changed but its base URL. Prints one JSON object with what it saw.
import OpenAI from "openai";

const client = new OpenAI({
  baseURL: process.env.PROXY_BASE_URL,
  apiKey: process.env.PROXY_CLIENT_KEY,
  maxRetries: 0,
});
const messages = [{ role: "user", content: "Tell me a story." }];
const out = {};

// 1. An allowed completion, with the decision header.
const { data: completion, response } = await client.chat.completions
  .create({ model: "m", messages })
  .withResponse();
out.allowed = {
  content: completion.choices[0].message.content,
  action: response.headers.get("x-traceguard-action"),
};

// 2. An allowed stream.
const stream = await client.chat.completions.create({ model: "m", messages, stream: true });
let text = "";
for await (const chunk of stream) {
  text += chunk.choices[0]?.delta?.content ?? "";
}
out.streamed = text;

// 3. A blocked completion: an APIError with the proxy's code.
try {
  await client.chat.completions.create({ model: "m", messages });
  out.blocked = { error: null };
} catch (err) {
  out.blocked = {
    error: err.constructor.name,
    status: err.status,
    code: err.code,
    action: err.headers?.get?.("x-traceguard-action") ?? null,
  };
}

// 4. A passthrough stream blocked at its end: the SDK throws mid-iteration.
const late = await client.chat.completions.create({ model: "m", messages, stream: true });
let seen = 0;
try {
  for await (const _chunk of late) {
    seen += 1;
  }
  out.late = { error: null, seen };
} catch (err) {
  out.late = { error: err.constructor.name, code: err.code ?? err.error?.code ?? null, seen };
}

// 5. The Responses API.
const reply = await client.responses.create({ model: "m", input: "Hello" });
out.responses = reply.output_text;

console.log(JSON.stringify(out));
