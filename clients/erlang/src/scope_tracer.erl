%% scope_tracer: trace a running BEAM node straight into a Scope cluster.
%%
%%   {ok, _} = scope_tracer:start(#{endpoint => "http://127.0.0.1:7070",
%%                                  procs => [my_server], modules => [my_mod]}),
%%   ... the system runs ...
%%   {ok, Stats} = scope_tracer:stop().
%%
%% One tracer process (registered as scope_tracer) receives the trace
%% messages (erlang:trace/3, erlang:trace_pattern/3), turns them into
%% scope.v1.Event JSON objects (the mapping is in docs/ERLANG.md), gives each
%% a ULID and queues it; one sender process (scope_sender) posts batches to
%% IngestService/Ingest and retries them with the same ids until they are
%% acknowledged. Neither is ever traced. With `file` instead of `endpoint`
%% the events are written to a local file, one per line, for
%% `scope ingest` (the offline mode).
%%
%% Options (maps; all but endpoint/file optional):
%%   endpoint      "http://host:port", "https://host:port", or a list of
%%                 them: on a failed attempt the sender moves to the next.
%%   file          write JSON lines to this file instead of sending.
%%   token         sent as "Authorization: Bearer <token>".
%%   cacertfile    CA bundle for https (default: the OS trust store).
%%   procs         new (default) | all | [pid() | atom()]; processes they
%%                 spawn are traced too (set_on_spawn).
%%   modules       [module()] to call-trace, local and exported functions.
%%   match         exception_trace (default) | return_trace.
%%   batch         events per request (default 500).
%%   flush_ms      longest wait before a partial batch is sent (100).
%%   max_queue     events buffered while the cluster is slow or away
%%                 (100000); beyond it the oldest are dropped (counted).
%%   max_rate      trace events per second of traced time above which
%%                 tracing stops (stopped_reason = max_rate; 50000).
%%   max_mailbox   trace messages waiting in the tracer's mailbox above
%%                 which tracing stops (stopped_reason = overload; 50000).
%%   max_events    stop tracing after this many events (stopped_reason =
%%                 max_events; default infinity, 200000 with file).
%%   durability    committed (default) | accepted.
%%   stop_timeout  how long stop/0 waits for acknowledgements, ms (10000).
%%   payload_chars, depth  formatting bounds of terms (1000, 40).
%%   request_timeout, connect_timeout, backoff_ms, max_backoff_ms
%%                 (15000, 5000, 100, 5000).
%%
%% Stats: traced (events made), sent (events sent at least once), retried
%% (events sent again), acked, dropped (oldest dropped from a full queue),
%% refused (refused for good by the server), queued (not yet acknowledged),
%% skipped (trace messages that map to no event), stopped_reason
%% (undefined while tracing; stop, max_rate, overload, max_events),
%% last_error. With file: traced, written, skipped, stopped_reason.
%% traced = acked + dropped + refused + queued, always.
-module(scope_tracer).

-export([start/1, stop/0, stats/0, start_cluster/2, stop_cluster/1]).
%% Building blocks, exported for tests.
-export([map_trace/2, new_map_state/1, event_json/1, default_opts/0]).

-define(NAME, scope_tracer).
-define(MAX_ALIASES, 65536).
-define(CALLBACKS, [init, handle_call, handle_cast, handle_info, handle_continue, code_change]).
-define(CHECK_EVERY, 64).
-define(MODULES, [scope_json, scope_ulid, scope_buf, scope_sender, scope_tracer]).

%% Mapping state: what turning trace messages into events remembers.
-record(m, {
    opts,
    seq = #{},        % pid() => last seq
    names = #{},      % registered name => pid(), from register/unregister traces
    aliases = #{},    % reference() => pid(), from '$gen_call' reply tags
    alias_q = queue:new(),
    cb = #{}          % pid() => {M, F, Arity, StateBefore} of an open gen_server callback
}).

-record(st, {
    m,                % #m{}
    opts,
    fd,               % file mode
    sender,           % http mode
    buf,
    inflight = none,  % {Ref, N}
    excluded = #{},   % pid() => true: never traced, events dropped
    traced = 0, sent = 0, retried = 0, acked = 0, refused = 0, skipped = 0, written = 0,
    stopped_reason = undefined,
    last_error = undefined,
    rate_sec, rate_n = 0,
    since_check = 0
}).

default_opts() ->
    #{procs => new, modules => [], match => exception_trace, batch => 500, flush_ms => 100,
      max_queue => 100000, max_rate => 50000, max_mailbox => 50000, durability => committed,
      stop_timeout => 10000, payload_chars => 1000, depth => 40}.

%% ---------------------------------------------------------------- API

start(Opts0) when is_map(Opts0) ->
    case whereis(?NAME) of
        undefined -> start1(Opts0);
        Pid -> {error, {already_started, Pid}}
    end;
start(Opts) -> {error, {bad_options, Opts, "want a map"}}.

start1(Opts0) ->
    MaxEvents = case Opts0 of #{file := _} -> 200000; _ -> infinity end,
    case validate(maps:merge((default_opts())#{max_events => MaxEvents}, Opts0)) of
        {ok, Opts} ->
            Caller = self(),
            Pid = spawn(fun() -> init(Caller, Opts) end),
            Ref = monitor(process, Pid),
            receive
                {Pid, started} -> demonitor(Ref, [flush]), {ok, Pid};
                {Pid, {error, _} = E} ->
                    %% Return once the name is free again.
                    receive {'DOWN', Ref, process, Pid, _} -> E end;
                {'DOWN', Ref, process, Pid, R} -> {error, R}
            end;
        {error, _} = E -> E
    end.

stop() -> call(stop, infinity).

stats() ->
    case call(stats, 5000) of
        {ok, S} -> S;
        E -> E
    end.

call(What, Timeout) ->
    case whereis(?NAME) of
        undefined -> {error, not_running};
        Pid ->
            Ref = monitor(process, Pid),
            Pid ! {What, self(), Ref},
            receive
                {Ref, Reply} when What =:= stop ->
                    %% The name is free once the tracer is gone.
                    receive {'DOWN', Ref, process, Pid, _} -> {ok, Reply} end;
                {Ref, Reply} -> demonitor(Ref, [flush]), {ok, Reply};
                {'DOWN', Ref, process, Pid, Reason} -> {error, Reason}
            after Timeout -> demonitor(Ref, [flush]), {error, timeout}
            end
    end.

%% start_cluster/2 loads this application's modules into each node and
%% starts a tracer there with the same options: a send from a process on
%% one node to a pid on another is a SEND there and a RECEIVE here, which
%% Scope pairs. Returns [{Node, {ok, Pid} | {error, Reason}}].
start_cluster(Nodes, Opts) ->
    [{N, case load_on(N) of
             ok -> on(N, start, [Opts]);
             E -> E
         end} || N <- Nodes].

%% stop_cluster/1 stops the tracer of every node: [{Node, {ok, Stats} | {error, R}}].
stop_cluster(Nodes) ->
    [{N, on(N, stop, [])} || N <- Nodes].

on(N, F, Args) ->
    case rpc:call(N, ?MODULE, F, Args) of
        {badrpc, R} -> {error, {badrpc, R}};
        Other -> Other
    end.

load_on(N) when N =:= node() -> ok;
load_on(N) ->
    try
        [begin
             {M, Bin, File} = code:get_object_code(M),
             case rpc:call(N, erlang, function_exported, [M, module_info, 1]) of
                 true ->
                     case rpc:call(N, M, module_info, [md5]) =:= M:module_info(md5) of
                         true -> ok;
                         false -> {module, M} = rpc:call(N, code, load_binary, [M, File, Bin])
                     end;
                 _ -> {module, M} = rpc:call(N, code, load_binary, [M, File, Bin])
             end
         end || M <- ?MODULES],
        ok
    catch
        C:R -> {error, {load, N, C, R}}
    end.

validate(O) ->
    Checks = [{procs, fun(new) -> true; (all) -> true; (L) -> is_list(L) end},
              {modules, fun(L) -> is_list(L) andalso lists:all(fun is_atom/1, L) end},
              {match, fun(M) -> M =:= exception_trace orelse M =:= return_trace end},
              {batch, fun(N) -> is_integer(N) andalso N > 0 andalso N =< 10000 end},
              {flush_ms, fun(N) -> is_integer(N) andalso N > 0 end},
              {max_queue, fun(N) -> is_integer(N) andalso N > 0 end},
              {max_rate, fun(infinity) -> true; (N) -> is_integer(N) andalso N > 0 end},
              {max_mailbox, fun(N) -> is_integer(N) andalso N > 0 end},
              {max_events, fun(infinity) -> true; (N) -> is_integer(N) andalso N > 0 end},
              {durability, fun(D) -> D =:= committed orelse D =:= accepted end},
              {stop_timeout, fun(N) -> is_integer(N) andalso N >= 0 end}],
    Bad = [{K, maps:get(K, O)} || {K, F} <- Checks, not F(maps:get(K, O))],
    case {Bad, maps:is_key(endpoint, O), maps:is_key(file, O)} of
        {[{K, V} | _], _, _} -> {error, {bad_option, K, V}};
        {[], false, false} -> {error, {missing_option, endpoint, "give endpoint (or file)"}};
        {[], true, true} -> {error, {bad_option, file, "give endpoint or file, not both"}};
        {[], true, false} ->
            Bad1 = [{E, Why} || E <- endpoint_list(maps:get(endpoint, O)),
                                {error, Why} <- [try scope_sender:parse_endpoint(E), ok
                                                 catch error:{bad_endpoint, _, W} -> {error, W}
                                                 end]],
            case Bad1 of
                [] -> {ok, O};
                [{E, Why} | _] -> {error, {bad_option, endpoint, E, Why}}
            end;
        {[], false, true} -> {ok, O}
    end.

endpoint_list(L) when is_list(L), L =/= [], not is_integer(hd(L)) -> L;
endpoint_list(E) -> [E].

%% ---------------------------------------------------------------- tracer process

init(Caller, Opts) ->
    try
        true = register(?NAME, self()),
        S0 = #st{m = new_map_state(Opts), opts = Opts, buf = scope_buf:new(maps:get(max_queue, Opts))},
        S1 = case Opts of
                 #{file := File} ->
                     %% raw: writes go straight from this process, no io
                     %% server that could itself be traced.
                     {ok, Fd} = file:open(File, [write, raw, binary, {delayed_write, 1 bsl 16, 200}]),
                     S0#st{fd = Fd};
                 _ ->
                     {ok, Sender} = scope_sender:start_link(self(), Opts),
                     S0#st{sender = Sender, excluded = #{Sender => true}}
             end,
        S2 = S1#st{excluded = maps:put(self(), true, S1#st.excluded)},
        trace_on(S2),
        erlang:send_after(maps:get(flush_ms, Opts), self(), flush),
        S2
    of
        S ->
            Caller ! {self(), started},
            loop(S)
    catch
        C:R:Stack ->
            catch trace_off(#st{opts = Opts}),
            Reason = case R of
                         {not_registered, _} -> R;
                         {already_traced, _, _} -> R;
                         _ -> {C, R, Stack}
                     end,
            Caller ! {self(), {error, Reason}}
    end.

flags() -> [call, send, 'receive', procs, set_on_spawn, monotonic_timestamp, {tracer, self()}].

trace_on(#st{opts = Opts, excluded = Ex}) ->
    Action = maps:get(match, Opts),
    [erlang:trace_pattern({M, '_', '_'}, [{'_', [], [{Action}]}], [local]) || M <- maps:get(modules, Opts)],
    case maps:get(procs, Opts) of
        new -> erlang:trace(new_processes, true, flags());
        all ->
            erlang:trace(processes, true, flags()),
            %% The tracer and its sender are never traced; whatever they
            %% caused before this line is dropped in handle/2.
            [catch erlang:trace(P, false, [all]) || P <- maps:keys(Ex)];
        L ->
            Ps = [resolve(P) || P <- L],
            %% One tracer per process: say which process is taken, and
            %% by whom, rather than fail with badarg.
            [case erlang:trace_info(P, tracer) of
                 {tracer, T} when T =/= [] -> error({already_traced, P, T});
                 _ -> ok
             end || P <- Ps],
            [erlang:trace(P, true, flags()) || P <- Ps]
    end,
    ok.

resolve(P) when is_pid(P) -> P;
resolve(A) when is_atom(A) ->
    case whereis(A) of
        P when is_pid(P) -> P;
        _ -> error({not_registered, A})
    end.

%% trace_off/1 removes the patterns and the trace flags of every process
%% this tracer traces (and of none traced by another tracer, e.g. dbg).
trace_off(#st{opts = Opts}) ->
    [erlang:trace_pattern({M, '_', '_'}, false, [local]) || M <- maps:get(modules, Opts)],
    case maps:get(procs, Opts) of
        new -> catch erlang:trace(new_processes, false, [all]);
        _ -> ok
    end,
    Me = self(),
    [catch erlang:trace(P, false, [all])
     || P <- erlang:processes(), erlang:trace_info(P, tracer) =:= {tracer, Me}],
    ok.

auto_stop(Reason, #st{stopped_reason = undefined} = S) ->
    trace_off(S),
    S#st{stopped_reason = Reason};
auto_stop(_, S) -> S.

loop(S) ->
    receive
        Msg when element(1, Msg) =:= trace_ts ->
            loop(check(handle(Msg, S)));
        flush ->
            erlang:send_after(maps:get(flush_ms, S#st.opts), self(), flush),
            loop(dispatch(S, true));
        {sender, _, _, _} = M -> loop(sender_msg(M, S));
        {sender, _, _, _, _} = M -> loop(sender_msg(M, S));
        {sender_helpers, Pids} ->
            [catch erlang:trace(P, false, [all]) || P <- Pids],
            loop(S#st{excluded = maps:merge(S#st.excluded, maps:from_keys(Pids, true))});
        {stats, From, Ref} ->
            From ! {Ref, stats_of(S)},
            loop(S);
        {stop, From, Ref} ->
            S1 = case S#st.stopped_reason of
                     undefined -> trace_off(S), S#st{stopped_reason = stop};
                     _ -> S
                 end,
            %% Every trace message generated before this point is now in
            %% the mailbox, ahead of the trace_delivered answer.
            DRef = erlang:trace_delivered(all),
            S2 = drain(DRef, S1),
            Deadline = erlang:monotonic_time(millisecond) + maps:get(stop_timeout, S#st.opts),
            S3 = finish(Deadline, S2),
            From ! {Ref, stats_of(S3)};
        _Other ->
            loop(S)
    end.

drain(DRef, S) ->
    receive
        {trace_delivered, all, DRef} -> S;
        Msg when element(1, Msg) =:= trace_ts -> drain(DRef, handle(Msg, S))
    end.

%% finish/2 sends what is queued, waiting until the deadline for the
%% acknowledgements; what is left is reported as queued.
finish(_Deadline, #st{fd = Fd} = S) when Fd =/= undefined ->
    ok = file:close(Fd),
    S#st{fd = undefined};
finish(Deadline, S0) ->
    S = dispatch(S0, true),
    case S#st.inflight of
        none ->
            stop_sender(S);
        _ ->
            Left = Deadline - erlang:monotonic_time(millisecond),
            receive
                {sender, _, _, _} = M -> finish(Deadline, sender_msg(M, S));
                {sender, _, _, _, _} = M -> finish(Deadline, sender_msg(M, S))
            after max(0, Left) ->
                stop_sender(S)
            end
    end.

stop_sender(#st{sender = P} = S) ->
    unlink(P),
    exit(P, kill),
    S.

check(#st{since_check = N} = S) when N < ?CHECK_EVERY -> S;
check(S) ->
    S1 = S#st{since_check = 0},
    {message_queue_len, L} = process_info(self(), message_queue_len),
    case L > maps:get(max_mailbox, S#st.opts) of
        true -> auto_stop(overload, S1);
        false -> S1
    end.

sender_msg({sender, Ref, attempt, N, Retry}, #st{inflight = {Ref, _}} = S) ->
    case Retry of
        false -> S#st{sent = S#st.sent + N};
        true -> S#st{retried = S#st.retried + N}
    end;
sender_msg({sender, Ref, retry, Why}, #st{inflight = {Ref, _}} = S) ->
    S#st{last_error = Why};
sender_msg({sender, Ref, done, acked}, #st{inflight = {Ref, N}} = S) ->
    dispatch(S#st{inflight = none, acked = S#st.acked + N}, false);
sender_msg({sender, Ref, done, {refused, Why}}, #st{inflight = {Ref, N}} = S) ->
    dispatch(S#st{inflight = none, refused = S#st.refused + N, last_error = Why}, false);
sender_msg(_, S) -> S.

%% dispatch/2 hands the sender the next batch when it is idle and a batch
%% is full (or Partial: the flush timer fired).
dispatch(#st{sender = undefined} = S, _) -> S;
dispatch(#st{inflight = none, buf = B} = S, Partial) ->
    L = scope_buf:len(B),
    Batch = maps:get(batch, S#st.opts),
    case L >= Batch orelse (Partial andalso L > 0) of
        true ->
            {Evs, B1} = scope_buf:take(Batch, B),
            Ref = make_ref(),
            S#st.sender ! {batch, Ref, Evs},
            S#st{buf = B1, inflight = {Ref, length(Evs)}};
        false -> S
    end;
dispatch(S, _) -> S.

stats_of(S) ->
    Queued = scope_buf:len(S#st.buf) + case S#st.inflight of none -> 0; {_, N} -> N end,
    Base = #{traced => S#st.traced, skipped => S#st.skipped, stopped_reason => S#st.stopped_reason},
    case S#st.opts of
        #{file := _} -> Base#{written => S#st.written};
        _ -> Base#{sent => S#st.sent, retried => S#st.retried, acked => S#st.acked,
                   dropped => scope_buf:dropped(S#st.buf), refused => S#st.refused,
                   queued => Queued, last_error => S#st.last_error}
    end.

%% handle/2: one trace message to zero or more queued events.
handle(Msg, #st{excluded = Ex} = S) ->
    Pid = element(2, Msg),
    case maps:is_key(Pid, Ex) orelse not is_pid(Pid) of
        true -> S#st{skipped = S#st.skipped + 1};
        false ->
            S1 = rate(element(tuple_size(Msg), Msg), S#st{since_check = S#st.since_check + 1}),
            {Evs, M1} = map_trace(Msg, S1#st.m),
            S2 = S1#st{m = M1},
            case Evs of
                [] -> S2#st{skipped = S2#st.skipped + 1};
                _ -> lists:foldl(fun emit/2, S2, Evs)
            end
    end.

%% rate/2 counts trace messages per second of the traced node's clock and
%% stops tracing past max_rate.
rate(Ts, #st{stopped_reason = undefined} = S) when is_integer(Ts) ->
    Sec = Ts div 1000000000,
    case S#st.rate_sec of
        Sec ->
            N = S#st.rate_n + 1,
            case maps:get(max_rate, S#st.opts) of
                Max when is_integer(Max), N > Max -> auto_stop(max_rate, S#st{rate_n = N});
                _ -> S#st{rate_n = N}
            end;
        _ -> S#st{rate_sec = Sec, rate_n = 1}
    end;
rate(_, S) -> S.

emit(Ev, S) ->
    S1 = case S#st.traced + 1 of
             Max when Max =:= map_get(max_events, S#st.opts) -> auto_stop(max_events, S);
             _ -> S
         end,
    emit1(Ev, S1).

emit1(Ev, #st{fd = Fd} = S) when Fd =/= undefined ->
    ok = file:write(Fd, [event_json(Ev), $\n]),
    S#st{traced = S#st.traced + 1, written = S#st.written + 1};
emit1(Ev, S) ->
    S1 = S#st{traced = S#st.traced + 1, buf = scope_buf:push(iolist_to_binary(event_json(Ev)), S#st.buf)},
    dispatch(S1, false).

%% event_json/1 renders an event map in proto3 JSON.
event_json(Ev) -> scope_json:encode(Ev).

%% ---------------------------------------------------------------- mapping
%%
%% map_trace/2 turns one trace message into a list of event maps (proto3
%% JSON field names; 64-bit integers as strings) and the new mapping
%% state. Pure apart from whereis/1 for sends to names and the clock
%% offset: the tests call it directly.

new_map_state(Opts) -> #m{opts = maps:merge(default_opts(), Opts)}.

map_trace({trace_ts, Pid, call, {M, F, Args}, Ts}, S) ->
    S1 = note_callback(Pid, M, F, Args, S),
    ev(Pid, Ts, (mfa(M, F, length(Args)))#{kind => 'KIND_CALL', payload => term(Args, S)}, #{}, S1);
map_trace({trace_ts, Pid, return_from, {M, F, A}, Value, Ts}, S) ->
    {Sc, S1} = state_change(Pid, M, F, A, Value, Ts, S),
    {Ret, S2} = ev(Pid, Ts, (mfa(M, F, A))#{kind => 'KIND_RETURN', payload => term(Value, S)}, #{}, S1),
    {Sc ++ Ret, S2};
map_trace({trace_ts, Pid, exception_from, {M, F, A}, {Class, Value}, Ts}, S) ->
    S1 = S#m{cb = maps:remove(Pid, S#m.cb)},
    ev(Pid, Ts, (mfa(M, F, A))#{kind => 'KIND_EXCEPTION', reason => term({Class, Value}, S)}, #{}, S1);
map_trace({trace_ts, Pid, send, Msg, To, Ts}, S) ->
    S1 = learn_alias(Msg, S),
    {Peer, Attrs} = target(To, S1),
    ev(Pid, Ts, maps:merge(Peer#{kind => 'KIND_SEND'}, message(Msg, S1)), Attrs, S1);
map_trace({trace_ts, Pid, send_to_non_existing_process, Msg, To, Ts}, S) ->
    %% The message was dropped: no RECEIVE will ever match, so no peerPid.
    ev(Pid, Ts, (message(Msg, S))#{kind => 'KIND_SEND'},
       #{to => fmt_to(To), undelivered => <<"true">>}, S);
map_trace({trace_ts, Pid, 'receive', Msg, Ts}, S) ->
    S1 = learn_alias(Msg, S),
    ev(Pid, Ts, (message(Msg, S1))#{kind => 'KIND_RECEIVE'}, #{}, S1);
map_trace({trace_ts, Pid, spawn, Child, {M, F, Args}, Ts}, S) ->
    ev(Pid, Ts, (peer(Child))#{kind => 'KIND_SPAWN', payload => term({M, F, Args}, S)},
       #{mfa => iolist_to_binary(io_lib:format("~tp:~tp/~b", [M, F, length(Args)]))}, S);
map_trace({trace_ts, Pid, exit, Reason, Ts}, S) ->
    {Evs, S1} = ev(Pid, Ts, #{kind => 'KIND_EXIT', reason => term(Reason, S)}, #{}, S),
    Names = maps:filter(fun(_, P) -> P =/= Pid end, S1#m.names),
    {Evs, S1#m{seq = maps:remove(Pid, S1#m.seq), cb = maps:remove(Pid, S1#m.cb), names = Names}};
map_trace({trace_ts, Pid, register, Name, _Ts}, S) ->
    {[], S#m{names = maps:put(Name, Pid, S#m.names)}};
map_trace({trace_ts, _Pid, unregister, Name, _Ts}, S) ->
    {[], S#m{names = maps:remove(Name, S#m.names)}};
map_trace(_Msg, S) ->
    {[], S}.

mfa(M, F, A) ->
    #{module => atom_to_binary(M), function => atom_to_binary(F), arity => A}.

message(Msg, S) ->
    Hash = erlang:phash2(Msg, 1 bsl 32),
    P = #{payload => term(Msg, S)},
    case Hash of
        0 -> P;
        _ -> P#{messageHash => integer_to_binary(Hash)}
    end.

%% target/2 maps a send destination to the event's peer and attributes.
%% A registered name is resolved to its pid at trace time: first from the
%% register/unregister traces of traced processes, then with whereis/1 (the
%% name may have moved between the send and now; said in to_resolved).
%% A reference is a process alias; gen_server replies go to the alias in
%% the '$gen_call' tag, which learn_alias/2 saw in the call message.
target(To, _S) when is_pid(To) ->
    {peer(To), #{}};
target(To, S) when is_atom(To) ->
    Name = atom_to_binary(To),
    case maps:find(To, S#m.names) of
        {ok, P} -> {peer(P), #{to_name => Name, to_resolved => <<"register_trace">>}};
        error ->
            case whereis(To) of
                P when is_pid(P) -> {peer(P), #{to_name => Name, to_resolved => <<"whereis">>}};
                _ -> {#{}, #{to_name => Name, to_resolved => <<"unresolved">>}}
            end
    end;
target({Name, Node}, S) when is_atom(Name), is_atom(Node) ->
    case Node =:= node() of
        true ->
            {Peer, Attrs} = target(Name, S),
            {Peer, Attrs#{to_node => atom_to_binary(Node)}};
        false ->
            {#{peerOrigin => atom_to_binary(Node)},
             #{to_name => atom_to_binary(Name), to_node => atom_to_binary(Node), to_resolved => <<"remote">>}}
    end;
target(To, S) when is_reference(To) ->
    Alias = list_to_binary(ref_to_list(To)),
    case maps:find(To, S#m.aliases) of
        {ok, P} -> {peer(P), #{to_alias => Alias, to_resolved => <<"gen_call">>}};
        error -> {#{}, #{to_alias => Alias, to_resolved => <<"unresolved">>}}
    end;
target(To, _S) when is_port(To) ->
    {#{}, #{to_port => list_to_binary(erlang:port_to_list(To))}};
target(To, _S) ->
    {#{}, #{to => fmt_to(To)}}.

peer(P) ->
    #{peerOrigin => atom_to_binary(node(P)), peerPid => pid_text(P)}.

%% pid_text/1 prints a pid as its own node prints it: "<0.X.Y>". A pid of
%% another node prints here as "<N.X.Y>", N a number local to this node;
%% the origin already names the node, and the receive traced there says
%% "<0.X.Y>", so that is what a SEND's peerPid must say to pair.
pid_text(P) ->
    "<" ++ Rest = pid_to_list(P),
    [_Node, Local] = string:split(Rest, "."),
    list_to_binary("<0." ++ Local).

fmt_to(To) -> unicode:characters_to_binary(io_lib:format("~0tp", [To])).

%% learn_alias/2 remembers which process owns the alias of a gen call, so
%% that the reply, sent to the alias, can name its receiver. Bounded: the
%% oldest alias is forgotten first.
learn_alias({'$gen_call', {Pid, [alias | Ref]}, _}, S) when is_pid(Pid), is_reference(Ref) ->
    case maps:is_key(Ref, S#m.aliases) of
        true -> S;
        false ->
            {A, Q} = bound_aliases(maps:put(Ref, Pid, S#m.aliases), queue:in(Ref, S#m.alias_q)),
            S#m{aliases = A, alias_q = Q}
    end;
learn_alias(_, S) ->
    S.

bound_aliases(A, Q) when map_size(A) =< ?MAX_ALIASES -> {A, Q};
bound_aliases(A, Q) ->
    {{value, Old}, Q1} = queue:out(Q),
    bound_aliases(maps:remove(Old, A), Q1).

%% State changes: for a gen_server-style callback module, the state before
%% a callback is its last argument and the state after is in its return
%% value. One STATE_CHANGE is emitted just before the callback's RETURN
%% (so its parent frame is the callback). No call into the traced process
%% (such as sys:get_state/1) is made.
note_callback(Pid, M, F, Args, S) ->
    case lists:member(F, ?CALLBACKS) andalso erlang:function_exported(M, handle_call, 3) of
        true ->
            Before = case F of init -> undefined; _ -> lists:last(Args) end,
            S#m{cb = maps:put(Pid, {M, F, length(Args), Before}, S#m.cb)};
        false -> S
    end.

state_change(Pid, M, F, A, Value, Ts, S) ->
    case maps:find(Pid, S#m.cb) of
        {ok, {M, F, A, Before}} ->
            S1 = S#m{cb = maps:remove(Pid, S#m.cb)},
            case new_state(F, Value) of
                {ok, After} ->
                    Cb = iolist_to_binary(io_lib:format("~tp/~b", [F, A])),
                    ev(Pid, Ts, #{kind => 'KIND_STATE_CHANGE', payload => term(After, S1)},
                       #{callback => Cb, changed => atom_to_binary(After =/= Before)}, S1);
                none -> {[], S1}
            end;
        _ -> {[], S}
    end.

new_state(init, {ok, St}) -> {ok, St};
new_state(init, {ok, St, _}) -> {ok, St};
new_state(_, {reply, _, St}) -> {ok, St};
new_state(_, {reply, _, St, _}) -> {ok, St};
new_state(_, {noreply, St}) -> {ok, St};
new_state(_, {noreply, St, _}) -> {ok, St};
new_state(_, {stop, _, _, St}) -> {ok, St};
new_state(_, {stop, _, St}) -> {ok, St};
new_state(code_change, {ok, St}) -> {ok, St};
new_state(_, _) -> none.

%% term/2 formats a term on one line, depth- and length-bounded:
%% a binary, or {trunc, Binary, FullLength}.
term(T, #m{opts = Opts}) ->
    Depth = maps:get(depth, Opts, 40),
    Max = maps:get(payload_chars, Opts, 1000),
    Chars = lists:flatten(io_lib:format("~0tP", [T, Depth])),
    case length(Chars) > Max of
        false -> unicode:characters_to_binary(Chars);
        true -> {trunc, unicode:characters_to_binary([lists:sublist(Chars, Max), "..."]), length(Chars)}
    end.

%% ev/5 completes one event: origin, pid, wall-clock timestamp (ns), seq
%% per pid, a ULID, truncation attributes.
ev(Pid, Ts, Fields0, Attrs0, S) ->
    Seq = maps:get(Pid, S#m.seq, 0) + 1,
    {Fields, Attrs} = untrunc(Fields0, Attrs0),
    Wall = Ts + erlang:time_offset(nanosecond),
    Ev0 = Fields#{origin => atom_to_binary(node(Pid)), pid => pid_text(Pid),
                  timestampNs => integer_to_binary(Wall), seq => integer_to_binary(Seq),
                  eventId => scope_ulid:new(Wall div 1000000)},
    Ev = case map_size(Attrs) of
             0 -> Ev0;
             _ -> Ev0#{attributes => Attrs}
         end,
    {[Ev], S#m{seq = maps:put(Pid, Seq, S#m.seq)}}.

untrunc(Fields, Attrs) ->
    maps:fold(fun(K, {trunc, Bin, Len}, {F, A}) ->
                      {F#{K => Bin}, A#{<<(atom_to_binary(K))/binary, "_chars">> => integer_to_binary(Len)}};
                 (_, _, Acc) -> Acc
              end, {Fields, Attrs}, Fields).
