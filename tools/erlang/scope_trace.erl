%% scope_trace: capture a BEAM trace as Scope events, one proto3 JSON
%% scope.v1.Event per line, ready for `scope ingest`.
%%
%% Usage from any node (Erlang or Elixir), after loading this module:
%%
%%   {ok, _} = scope_trace:start("trace.jsonl",
%%                               #{procs => [my_server, Pid], modules => [my_mod]}),
%%   ... run the workload ...
%%   {ok, Stats} = scope_trace:stop().
%%
%% Options (all optional):
%%   procs         new | all | [pid() | atom()]   processes to trace (default new);
%%                 processes they spawn are traced too (set_on_spawn).
%%   modules       [module()]  modules whose functions (local and exported) are
%%                 call-traced with {exception_trace}: CALL, RETURN, EXCEPTION.
%%                 Default [] (messages, spawns and exits only).
%%   match         exception_trace (default) or return_trace: the match spec
%%                 action. With return_trace an exception produces no event:
%%                 Scope closes the skipped frames as UNWOUND when a caller
%%                 returns, or as PROCESS_EXIT when the process dies.
%%   max_events    stop tracing after this many events (default 200000).
%%   payload_chars keep at most this many characters of a formatted term
%%                 (default 1000); longer ones end in "..." and carry the
%%                 attribute payload_chars (the formatted length).
%%   depth         term depth given to ~P (default 40).
%%
%% The mapping from trace messages to events is in docs/ERLANG.md. Event ids
%% are left empty (Scope assigns them); every event carries seq, numbered per
%% pid from 1 in the order the tracer received that pid's trace messages
%% (which is the order they happened: BEAM keeps one process's trace
%% messages in order).
-module(scope_trace).

-export([start/2, stop/0, event_json/3]).

-define(NAME, scope_tracer).
-define(MAX_ALIASES, 65536).
-define(CALLBACKS, [init, handle_call, handle_cast, handle_info, handle_continue, code_change]).

-record(st, {
    fd,
    opts,
    procs,
    seq = #{},        % pid() => last seq
    names = #{},      % registered name => pid(), from register/unregister traces
    aliases = #{},    % reference() => pid(), from '$gen_call' reply tags
    alias_q = queue:new(),
    cb = #{},         % pid() => {M, F, Arity, StateBefore} of an open gen_server callback
    written = 0,
    skipped = #{},    % trace message tag => count, for messages that map to no event
    max,
    stopped = false
}).

start(File, Opts) when is_map(Opts) ->
    Caller = self(),
    Pid = spawn(fun() -> init(Caller, File, Opts) end),
    receive
        {Pid, started} -> {ok, Pid};
        {Pid, {error, _} = E} -> E
    after 10000 -> {error, timeout}
    end.

stop() ->
    case whereis(?NAME) of
        undefined -> {error, not_running};
        Pid ->
            Ref = monitor(process, Pid),
            Pid ! {stop, self(), Ref},
            receive
                {Ref, Stats} -> demonitor(Ref, [flush]), {ok, Stats};
                {'DOWN', Ref, process, Pid, Reason} -> {error, Reason}
            end
    end.

init(Caller, File, Opts) ->
    try
        true = register(?NAME, self()),
        %% raw: writes go straight from this process, no messages to an io
        %% server that could itself be traced.
        {ok, Fd} = file:open(File, [write, raw, binary, {delayed_write, 1 bsl 16, 200}]),
        Procs = maps:get(procs, Opts, new),
        Flags = [call, send, 'receive', procs, set_on_spawn, monotonic_timestamp, {tracer, self()}],
        Action = case maps:get(match, Opts, exception_trace) of
                     exception_trace -> exception_trace;
                     return_trace -> return_trace
                 end,
        [erlang:trace_pattern({M, '_', '_'}, [{'_', [], [{Action}]}], [local])
         || M <- maps:get(modules, Opts, [])],
        Pids = case Procs of
                   new -> erlang:trace(new, true, Flags), [];
                   all -> erlang:trace(all, true, Flags), erlang:trace(self(), false, [all]), [];
                   L when is_list(L) ->
                       Ps = [resolve(P) || P <- L],
                       [erlang:trace(P, true, Flags) || P <- Ps],
                       Ps
               end,
        Caller ! {self(), started},
        loop(#st{fd = Fd, opts = Opts, procs = {Procs, Pids}, max = maps:get(max_events, Opts, 200000)})
    catch
        C:R:Stack -> Caller ! {self(), {error, {C, R, Stack}}}
    end.

resolve(P) when is_pid(P) -> P;
resolve(A) when is_atom(A) ->
    case whereis(A) of
        P when is_pid(P) -> P;
        _ -> error({not_registered, A})
    end.

loop(S) ->
    receive
        {stop, From, Ref} ->
            S1 = untrace(S),
            %% Every trace message generated before this point is now in
            %% our mailbox, ahead of the trace_delivered answer.
            DRef = erlang:trace_delivered(all),
            S2 = drain(DRef, S1),
            ok = file:close(S2#st.fd),
            From ! {Ref, #{written => S2#st.written, skipped => S2#st.skipped,
                           stopped_at_max => S2#st.stopped}};
        Msg when element(1, Msg) =:= trace_ts ->
            loop(handle(Msg, S));
        _Other ->
            loop(S)
    end.

drain(DRef, S) ->
    receive
        {trace_delivered, all, DRef} -> S;
        Msg when element(1, Msg) =:= trace_ts -> drain(DRef, handle(Msg, S))
    end.

untrace(#st{procs = {Procs, Pids}, opts = Opts} = S) ->
    [erlang:trace_pattern({M, '_', '_'}, false, [local]) || M <- maps:get(modules, Opts, [])],
    case Procs of
        new -> catch erlang:trace(new, false, [all]);
        _ -> ok
    end,
    Traced = lists:usort(Pids ++ maps:keys(S#st.seq)),
    [catch erlang:trace(P, false, [all]) || P <- Traced, is_process_alive(P)],
    S.

%% handle/2 turns one trace message into zero, one or two events.
handle(_Msg, #st{stopped = true} = S) ->
    S;
handle(_Msg, #st{written = W, max = Max} = S) when W >= Max ->
    S1 = untrace(S),
    S1#st{stopped = true};
handle({trace_ts, Pid, call, {M, F, Args}, Ts}, S) ->
    S1 = note_callback(Pid, M, F, Args, S),
    emit(Pid, Ts, [{kind, 'KIND_CALL'} | mfa(M, F, length(Args))] ++ [{payload, term(Args, S)}], [], S1);
handle({trace_ts, Pid, return_from, {M, F, A}, Value, Ts}, S) ->
    S1 = state_change(Pid, M, F, A, Value, Ts, S),
    emit(Pid, Ts, [{kind, 'KIND_RETURN'} | mfa(M, F, A)] ++ [{payload, term(Value, S)}], [], S1);
handle({trace_ts, Pid, exception_from, {M, F, A}, {Class, Value}, Ts}, S) ->
    S1 = S#st{cb = maps:remove(Pid, S#st.cb)},
    emit(Pid, Ts, [{kind, 'KIND_EXCEPTION'} | mfa(M, F, A)] ++ [{reason, term({Class, Value}, S)}], [], S1);
handle({trace_ts, Pid, send, Msg, To, Ts}, S) ->
    S1 = learn_alias(Msg, S),
    {Peer, Attrs, S2} = target(To, S1),
    emit(Pid, Ts, [{kind, 'KIND_SEND'} | Peer] ++ message(Msg, S2), Attrs, S2);
handle({trace_ts, Pid, send_to_non_existing_process, Msg, To, Ts}, S) ->
    %% The message was dropped: no RECEIVE will ever match, so no peer_pid
    %% (it would only wait in Scope's pending table until its TTL).
    emit(Pid, Ts, [{kind, 'KIND_SEND'}] ++ message(Msg, S),
         [{to, fmt_to(To)}, {undelivered, <<"true">>}], S);
handle({trace_ts, Pid, 'receive', Msg, Ts}, S) ->
    S1 = learn_alias(Msg, S),
    emit(Pid, Ts, [{kind, 'KIND_RECEIVE'} | message(Msg, S1)], [], S1);
handle({trace_ts, Pid, spawn, Child, {M, F, Args}, Ts}, S) ->
    emit(Pid, Ts, [{kind, 'KIND_SPAWN'}, {peerOrigin, atom_to_binary(node(Child))},
                   {peerPid, list_to_binary(pid_to_list(Child))}, {payload, term({M, F, Args}, S)}],
         [{mfa, iolist_to_binary(io_lib:format("~tp:~tp/~b", [M, F, length(Args)]))}], S);
handle({trace_ts, Pid, exit, Reason, Ts}, S) ->
    S1 = emit(Pid, Ts, [{kind, 'KIND_EXIT'}, {reason, term(Reason, S)}], [], S),
    Names = maps:filter(fun(_, P) -> P =/= Pid end, S1#st.names),
    S1#st{seq = maps:remove(Pid, S1#st.seq), cb = maps:remove(Pid, S1#st.cb), names = Names};
handle({trace_ts, Pid, register, Name, _Ts}, S) ->
    skip(register, S#st{names = maps:put(Name, Pid, S#st.names)});
handle({trace_ts, _Pid, unregister, Name, _Ts}, S) ->
    skip(unregister, S#st{names = maps:remove(Name, S#st.names)});
handle(Msg, S) ->
    skip(element(3, Msg), S).

skip(Tag, S) ->
    S#st{skipped = maps:update_with(Tag, fun(N) -> N + 1 end, 1, S#st.skipped)}.

mfa(M, F, A) ->
    [{module, atom_to_binary(M)}, {function, atom_to_binary(F)}, {arity, A}].

message(Msg, S) ->
    Hash = erlang:phash2(Msg, 1 bsl 32),
    [{payload, term(Msg, S)} | [{messageHash, Hash} || Hash =/= 0]].

%% target/2 maps a send destination to the event's peer and attributes.
%% A registered name is resolved to its pid at trace time: first from the
%% register/unregister traces of traced processes, then with whereis/1 (the
%% name may have moved between the send and now; said in to_resolved).
%% A reference is a process alias; gen_server replies go to the alias in
%% the '$gen_call' tag, which learn_alias/2 saw in the call message.
target(To, S) when is_pid(To) ->
    {peer(To), [], S};
target(To, S) when is_atom(To) ->
    Name = atom_to_binary(To),
    case maps:find(To, S#st.names) of
        {ok, P} -> {peer(P), [{to_name, Name}, {to_resolved, <<"register_trace">>}], S};
        error ->
            case whereis(To) of
                P when is_pid(P) -> {peer(P), [{to_name, Name}, {to_resolved, <<"whereis">>}], S};
                _ -> {[], [{to_name, Name}, {to_resolved, <<"unresolved">>}], S}
            end
    end;
target({Name, Node}, S) when is_atom(Name), is_atom(Node) ->
    case Node =:= node() of
        true ->
            {Peer, Attrs, S1} = target(Name, S),
            {Peer, [{to_node, atom_to_binary(Node)} | Attrs], S1};
        false ->
            {[{peerOrigin, atom_to_binary(Node)}],
             [{to_name, atom_to_binary(Name)}, {to_node, atom_to_binary(Node)}, {to_resolved, <<"remote">>}],
             S}
    end;
target(To, S) when is_reference(To) ->
    Alias = list_to_binary(ref_to_list(To)),
    case maps:find(To, S#st.aliases) of
        {ok, P} -> {peer(P), [{to_alias, Alias}, {to_resolved, <<"gen_call">>}], S};
        error -> {[], [{to_alias, Alias}, {to_resolved, <<"unresolved">>}], S}
    end;
target(To, S) when is_port(To) ->
    {[], [{to_port, list_to_binary(erlang:port_to_list(To))}], S};
target(To, S) ->
    {[], [{to, fmt_to(To)}], S}.

peer(P) ->
    [{peerOrigin, atom_to_binary(node(P))}, {peerPid, list_to_binary(pid_to_list(P))}].

fmt_to(To) -> unicode:characters_to_binary(io_lib:format("~0tp", [To])).

%% learn_alias/2 remembers which process owns the alias of a gen call, so
%% that the reply, sent to the alias, can name its receiver. Bounded: the
%% oldest alias is forgotten first.
learn_alias({'$gen_call', {Pid, [alias | Ref]}, _}, S) when is_pid(Pid), is_reference(Ref) ->
    case maps:is_key(Ref, S#st.aliases) of
        true -> S;
        false ->
            {A, Q} = bound_aliases(maps:put(Ref, Pid, S#st.aliases), queue:in(Ref, S#st.alias_q)),
            S#st{aliases = A, alias_q = Q}
    end;
learn_alias(_, S) ->
    S.

bound_aliases(A, Q) when map_size(A) =< ?MAX_ALIASES -> {A, Q};
bound_aliases(A, Q) ->
    {{value, Old}, Q1} = queue:out(Q),
    bound_aliases(maps:remove(Old, A), Q1).

%% State changes: for a gen_server-style callback module, the state before
%% a callback is its last argument and the state after is in its return
%% value. The tracer emits one STATE_CHANGE just before the callback's
%% RETURN (so its parent frame is the callback) with the new state as
%% payload and attributes callback and changed. No call into the traced
%% process (such as sys:get_state/1) is made.
note_callback(Pid, M, F, Args, S) ->
    case lists:member(F, ?CALLBACKS) andalso erlang:function_exported(M, handle_call, 3) of
        true ->
            Before = case F of init -> undefined; _ -> lists:last(Args) end,
            S#st{cb = maps:put(Pid, {M, F, length(Args), Before}, S#st.cb)};
        false -> S
    end.

state_change(Pid, M, F, A, Value, Ts, S) ->
    case maps:find(Pid, S#st.cb) of
        {ok, {M, F, A, Before}} ->
            S1 = S#st{cb = maps:remove(Pid, S#st.cb)},
            case new_state(F, Value) of
                {ok, After} ->
                    Changed = atom_to_binary(After =/= Before),
                    Cb = iolist_to_binary(io_lib:format("~tp/~b", [F, A])),
                    emit(Pid, Ts, [{kind, 'KIND_STATE_CHANGE'}, {payload, term(After, S1)}],
                         [{callback, Cb}, {changed, Changed}], S1);
                none -> S1
            end;
        _ -> S
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

%% term/2 formats a term on one line, depth- and length-bounded.
term(T, #st{opts = Opts}) ->
    Depth = maps:get(depth, Opts, 40),
    Max = maps:get(payload_chars, Opts, 1000),
    Chars = lists:flatten(io_lib:format("~0tP", [T, Depth])),
    case length(Chars) > Max of
        false -> unicode:characters_to_binary(Chars);
        true -> {trunc, unicode:characters_to_binary([lists:sublist(Chars, Max), "..."]), length(Chars)}
    end.

emit(Pid, Ts, Fields0, Attrs0, #st{fd = Fd} = S) ->
    Seq = maps:get(Pid, S#st.seq, 0) + 1,
    {Fields, Attrs} = untrunc(Fields0, Attrs0),
    Wall = Ts + erlang:time_offset(nanosecond),
    Line = event_json([{origin, atom_to_binary(node(Pid))}, {pid, list_to_binary(pid_to_list(Pid))}
                       | Fields] ++ [{timestampNs, {int64, Wall}}, {seq, {int64, Seq}}], Attrs, nl),
    ok = file:write(Fd, Line),
    S#st{seq = maps:put(Pid, Seq, S#st.seq), written = S#st.written + 1}.

untrunc(Fields, Attrs) ->
    lists:foldr(fun({K, {trunc, Bin, Len}}, {F, A}) ->
                        {[{K, Bin} | F], [{iolist_to_binary([atom_to_binary(K), "_chars"]), integer_to_binary(Len)} | A]};
                   (KV, {F, A}) -> {[KV | F], A}
                end, {[], Attrs}, Fields).

%% event_json/3 renders one event object in proto3 JSON (lowerCamel names,
%% int64/uint64 as strings, enums by name).
event_json(Fields, Attrs, nl) ->
    [event_json(Fields, Attrs, none), $\n];
event_json(Fields, Attrs, none) ->
    Pairs = [[str(atom_to_binary(K)), $:, val(K, V)] || {K, V} <- Fields],
    AttrPairs = case Attrs of
                    [] -> [];
                    _ -> [[str(<<"attributes">>), $:, ${,
                           lists:join($,, [[str(key(K)), $:, str(V)] || {K, V} <- Attrs]), $}]]
                end,
    [${, lists:join($,, Pairs ++ AttrPairs), $}].

key(K) when is_atom(K) -> atom_to_binary(K);
key(K) -> K.

val(_, {int64, N}) -> [$", integer_to_binary(N), $"];
val(messageHash, N) -> [$", integer_to_binary(N), $"];
val(arity, N) -> integer_to_binary(N);
val(kind, K) -> str(atom_to_binary(K));
val(_, B) when is_binary(B) -> str(B).

str(B) -> [$", esc(B), $"].

esc(<<>>) -> [];
esc(<<$", R/binary>>) -> [$\\, $" | esc(R)];
esc(<<$\\, R/binary>>) -> [$\\, $\\ | esc(R)];
esc(<<C, R/binary>>) when C < 16#20 -> [io_lib:format("\\u~4.16.0b", [C]) | esc(R)];
esc(<<C, R/binary>>) -> [C | esc(R)].
