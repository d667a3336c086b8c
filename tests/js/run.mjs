// replicate.run() of the official JavaScript client, as a user calls it, against this service.
// Usage: node run.mjs BASE_URL TOKEN OWNER/NAME INPUT_JSON WAIT_SECONDS; prints the output as JSON.
import Replicate from "replicate";

const [base, token, model, input, wait] = process.argv.slice(2);
const replicate = new Replicate({ auth: token, baseUrl: `${base}/v1`, useFileOutput: false });
const output = await replicate.run(model, { input: JSON.parse(input), wait: { mode: "block", timeout: Number(wait) } });
console.log(JSON.stringify(output));
