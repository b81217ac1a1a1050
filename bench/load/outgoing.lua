-- wrk script: outgoing webhooks shaped like a Zulip organisation's, for docs/benchmarks.md.
--
--   wrk -t2 -c32 -d10s -s bench/load/outgoing.lua http://127.0.0.1:8080/zulip/outgoing
--
-- (bench/run outgoing starts a server with bench/outgoing.toml and runs this.)
--
-- Every request carries a message id no earlier request had: Zulip sends an id twice only as a
-- retry, which the server answers from its record without running the listeners, so a body
-- repeated verbatim would measure that shortcut. Ids start from the clock, so runs against the
-- same database do not collide either.
--
-- The traffic, per request, drawn from a generator seeded per wrk thread (so two runs send the
-- same mix):
--   * 70 % @-mentions in a channel (trigger "mention", one of 24 channels, a topic of 40),
--     30 % direct messages to the bot (trigger "direct_message", type "private");
--   * senders: BENCH_USERS distinct users (default 400), ids, emails and names of their own;
--   * what they ask command_bot: `ping` 45 %, `echo <text>` 30 %, `help` 12 %, a sentence that is
--     no command 12 %, `stats` 1 % (it reads the event log);
--   * message sizes as chat has them: most texts 20–120 characters, three in ten 120–300, one
--     in ten 1,000–3,000, with Zulip's `rendered_content` beside the Markdown (bodies of about
--     1.2 KB on average, up to about 10 KB; the mean is printed at the end).
-- BENCH_TOKEN and BENCH_EMAIL must match the bot in the server's configuration; the defaults are
-- those of bench/outgoing.toml.

local TEMPLATES = 512          -- bodies prepared per thread; the id is put in per request

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

local WORDS = {
  "deploy", "build", "review", "release", "meeting", "notes", "the", "a", "is", "on", "for",
  "staging", "production", "ticket", "customer", "please", "check", "why", "failed", "green",
  "tomorrow", "today", "migration", "database", "latency", "dashboard", "alert", "fixed", "merged",
  "branch", "test", "flaky", "rollback", "config", "docs", "typo", "link", "thanks", "agreed",
}

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' elseif c == "\\" then return "\\\\"
    elseif c == "\n" then return "\\n" else return string.format("\\u%04x", c:byte()) end
  end) .. '"'
end

local function html_escape(s)
  return (s:gsub("&", "&amp;"):gsub("<", "&lt;"):gsub(">", "&gt;"):gsub('"', "&quot;"))
end

local function sentence(chars)
  local parts, n = {}, 0
  while n < chars do
    local w = WORDS[math.random(#WORDS)]
    parts[#parts + 1] = w
    n = n + #w + 1
  end
  return table.concat(parts, " ")
end

-- A text of the length chat messages have: mostly short, sometimes a paragraph or more.
local function chat_text()
  local r = math.random()
  if r < 0.10 then
    return sentence(math.random(1000, 3000))
  elseif r < 0.40 then
    return sentence(math.random(120, 300))
  else
    return sentence(math.random(20, 120))
  end
end

local function command()
  local r = math.random()
  if r < 0.45 then return "ping"
  elseif r < 0.75 then return "echo " .. chat_text()
  elseif r < 0.87 then return "help"
  elseif r < 0.99 then return "can someone " .. sentence(math.random(20, 200)) .. "?"
  else return "stats" end
end

-- One body, split where the message id goes.
local function template(users, bot_email, bot_name, token)
  local user = math.random(users)
  local sender_id = 1000 + user
  local sender_email = "user" .. user .. "@example.com"
  local sender_name = "User " .. user
  local text = command()
  local msg = {}
  local trigger, content
  if math.random() < 0.70 then
    trigger = "mention"
    content = "@**" .. bot_name .. "** " .. text
    local channel = math.random(24)
    msg.type = '"stream"'
    msg.display_recipient = json_string("channel-" .. channel)
    msg.stream_id = tostring(100 + channel)
    msg.recipient_id = tostring(500 + channel)
    msg.subject = json_string("topic " .. math.random(40))
    msg.rendered = '<p><span class=\\"user-mention\\" data-user-id=\\"42\\">@' .. html_escape(bot_name) ..
      '</span> ' .. html_escape(text) .. '</p>'
  else
    trigger = "direct_message"
    content = text
    msg.type = '"private"'
    msg.display_recipient = '[{"id": ' .. sender_id .. ', "email": ' .. json_string(sender_email) ..
      ', "full_name": ' .. json_string(sender_name) .. ', "is_mirror_dummy": false}, ' ..
      '{"id": 42, "email": ' .. json_string(bot_email) .. ', "full_name": ' .. json_string(bot_name) ..
      ', "is_mirror_dummy": false}]'
    msg.recipient_id = tostring(10000 + user)
    msg.subject = '""'
    msg.rendered = "<p>" .. html_escape(text) .. "</p>"
  end
  local body = '{"bot_email": ' .. json_string(bot_email) ..
    ', "bot_full_name": ' .. json_string(bot_name) ..
    ', "data": ' .. json_string(content) ..
    ', "message": {"avatar_url": "https://secure.gravatar.com/avatar/' .. string.format("%032x", sender_id) ..
    '?d=identicon&version=1", "client": "website", "content": ' .. json_string(content) ..
    ', "content_type": "text/x-markdown", "display_recipient": ' .. msg.display_recipient ..
    ', "id": @@MESSAGE_ID@@, "is_me_message": false, "reactions": [], "recipient_id": ' .. msg.recipient_id ..
    ', "rendered_content": "' .. msg.rendered:gsub("\n", "\\n") .. '"' ..
    ', "sender_email": ' .. json_string(sender_email) ..
    ', "sender_full_name": ' .. json_string(sender_name) ..
    ', "sender_id": ' .. sender_id .. ', "sender_realm_str": "bench"' ..
    (msg.stream_id and (', "stream_id": ' .. msg.stream_id) or "") ..
    ', "subject": ' .. msg.subject ..
    ', "submessages": [], "timestamp": ' .. os.time() .. ', "topic_links": [], "type": ' .. msg.type ..
    '}, "token": ' .. json_string(token) .. ', "trigger": "' .. trigger .. '"}'
  local at = body:find("@@MESSAGE_ID@@", 1, true)
  return { body:sub(1, at - 1), body:sub(at + #"@@MESSAGE_ID@@") }
end

function init(args)
  tid = tonumber(tid) or 0
  math.randomseed(7919 * (tid + 1))
  local token = os.getenv("BENCH_TOKEN") or "bench-token-only-for-loopback-000001"
  local bot_email = os.getenv("BENCH_EMAIL") or "bench-bot@localhost"
  local bot_name = os.getenv("BENCH_BOT_NAME") or "Bench bot"
  local users = tonumber(os.getenv("BENCH_USERS") or "400")
  templates = {}
  local bytes = 0
  for i = 1, TEMPLATES do
    templates[i] = template(users, bot_email, bot_name, token)
    bytes = bytes + #templates[i][1] + #templates[i][2] + 16
  end
  mean_body = bytes / TEMPLATES
  -- Ids from the clock (microseconds), a billion apart per thread: unique across threads and runs.
  next_id = os.time() * 1000000 + tid * 1000000000
  counter = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local t = templates[(counter % TEMPLATES) + 1]
  return wrk.format(nil, nil, nil, t[1] .. string.format("%.0f", next_id + counter) .. t[2])
end

function done(summary, latency, requests)
  local mean = 0
  for _, thread in ipairs(threads) do
    mean = mean + (tonumber(thread:get("mean_body")) or 0)
  end
  mean = mean / math.max(#threads, 1)
  local seconds = summary.duration / 1e6
  io.write(string.format(
    "RESULT requests=%d requests_per_s=%.0f non_2xx=%d socket_errors=%d p50_us=%d p99_us=%d mean_body_bytes=%.0f\n",
    summary.requests, summary.requests / seconds, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), mean))
end
