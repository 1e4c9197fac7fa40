// nodemailer through the relay: node send_nodemailer.js PORT CERT FROM TO MESSAGEFILE AUTHMETHOD SECURE
// The raw message is sent as-is (byte-exact check); STARTTLS is required unless SECURE=1 (SMTPS).
const fs = require("fs");
const nodemailer = require("nodemailer");
const [port, cert, from, to, file, method, secure] = process.argv.slice(2);
const transport = nodemailer.createTransport({
  host: "127.0.0.1", port: Number(port), secure: secure === "1", requireTLS: secure !== "1",
  tls: { ca: [fs.readFileSync(cert)], servername: "localhost" },
  auth: { user: process.env.RELAY_USER, pass: process.env.RELAY_PASSWORD, method },
});
transport.sendMail({ envelope: { from, to: [to] }, raw: fs.readFileSync(file) })
  .then((info) => { console.log(info.response); transport.close(); })
  .catch((err) => { console.error(err); process.exit(1); });
