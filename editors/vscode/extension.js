// The blkc extension: starts `blkc lsp` for .blk files and passes it the
// `blkc.*` settings. Colours come from the TextMate grammar alone.
"use strict";

const vscode = require("vscode");
const { LanguageClient, TransportKind } = require("vscode-languageclient/node");

let client;

function options() {
  const config = vscode.workspace.getConfiguration("blkc");
  return { depth: config.get("depth"), syntax_only: config.get("syntaxOnly") };
}

async function activate(context) {
  const command = vscode.workspace.getConfiguration("blkc").get("path") || "blkc";
  const server = { command, args: ["lsp"], transport: TransportKind.stdio };
  client = new LanguageClient(
    "blkc",
    "blkc",
    { run: server, debug: server },
    {
      documentSelector: [
        { scheme: "file", language: "blk" },
        { scheme: "untitled", language: "blk" },
      ],
      initializationOptions: options(),
    }
  );
  context.subscriptions.push(
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (e.affectsConfiguration("blkc") && client) {
        client.sendNotification("workspace/didChangeConfiguration", { settings: { blkc: options() } });
      }
    })
  );
  try {
    await client.start();
  } catch (e) {
    vscode.window.showErrorMessage(
      `blkc: could not start \`${command} lsp\` (${e.message}). Build blkc (cargo build --release) and set blkc.path.`
    );
  }
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
