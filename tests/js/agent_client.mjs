// A JavaScript agent on the official supabase-js, driven line by line from pytest
// (tests/js/supabase_js.py): one JSON command per stdin line, one JSON event per stdout line.
//
// Environment: SUPABASE_URL, SUPABASE_KEY (the project's anon key), AGENT_TOKEN (the agent's
// JWT, given to supabase-js through its `accessToken` option), REALTIME_VSN (unset: the
// client's default protocol version).
//
// Commands: {"cmd":"info"} | {"cmd":"rpc","fn":..,"args":{..}} |
//   {"cmd":"subscribe","topic":..,"private":true} | {"cmd":"unsubscribe","topic":..} |
//   {"cmd":"token","token":..} (the next token accessToken() returns) | {"cmd":"refresh"}
//   (realtime.setAuth(): supabase-js pushes the new token to every channel) | {"cmd":"exit"}
// Events: {"ready"}, {"reply":cmd,...}, {"status":..,"topic":..,"error":..}, {"broadcast":topic,..}.
import { createClient } from '@supabase/supabase-js'
import { createInterface } from 'node:readline'
import WebSocket from 'ws'

const emit = (event) => process.stdout.write(JSON.stringify(event) + '\n')

let token = process.env.AGENT_TOKEN
const realtime = { transport: WebSocket }  // Node 20 has no global WebSocket
if (process.env.REALTIME_VSN) realtime.vsn = process.env.REALTIME_VSN

const supabase = createClient(process.env.SUPABASE_URL, process.env.SUPABASE_KEY, {
  accessToken: async () => token,
  realtime,
})
const channels = new Map()

async function handle(command) {
  switch (command.cmd) {
    case 'info':
      return { vsn: supabase.realtime.vsn }
    case 'rpc': {
      const { data, error } = await supabase.rpc(command.fn, command.args ?? {})
      return { data, error }
    }
    case 'subscribe': {
      const channel = supabase.channel(command.topic, { config: { private: command.private ?? true } })
      channel.on('broadcast', { event: '*' }, (message) => emit({ broadcast: command.topic, ...message }))
      channels.set(command.topic, channel)
      channel.subscribe((status, error) => emit({ status, topic: command.topic, error: error ? String(error.message ?? error) : null }))
      return {}
    }
    case 'unsubscribe': {
      const channel = channels.get(command.topic)
      channels.delete(command.topic)
      return { result: channel ? await supabase.removeChannel(channel) : 'missing' }
    }
    case 'token':
      token = command.token
      return {}
    case 'refresh':
      await supabase.realtime.setAuth()
      return {}
    case 'exit':
      await supabase.removeAllChannels()
      emit({ reply: 'exit', id: command.id ?? null })  // (with its id, or close() waits out its timeout)
      process.exit(0)
    default:
      throw new Error(`unknown command ${command.cmd}`)
  }
}

const lines = createInterface({ input: process.stdin })
lines.on('line', async (line) => {
  let command
  try {
    command = JSON.parse(line)
    emit({ reply: command.cmd, id: command.id ?? null, ...(await handle(command)) })
  } catch (error) {
    emit({ reply: command?.cmd ?? null, id: command?.id ?? null, failed: String(error?.stack ?? error) })
  }
})
lines.on('close', () => process.exit(0))
emit({ ready: true, vsn: supabase.realtime.vsn })
