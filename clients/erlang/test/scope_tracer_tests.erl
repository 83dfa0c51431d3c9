-module(scope_tracer_tests).
-include_lib("eunit/include/eunit.hrl").

-export([init/1, handle_call/3, handle_cast/2, deep/2]).

map(Msg) -> map(Msg, scope_tracer:new_map_state(#{})).
map(Msg, S) -> scope_tracer:map_trace(Msg, S).

ts() -> erlang:monotonic_time(nanosecond).

call_return_test() ->
    P = self(),
    T = ts(),
    {[C], S1} = map({trace_ts, P, call, {lists, reverse, [[1, 2]]}, T}),
    ?assertMatch(#{kind := 'KIND_CALL', module := <<"lists">>, function := <<"reverse">>, arity := 1,
                   payload := <<"[[1,2]]">>, seq := <<"1">>}, C),
    ?assertEqual(atom_to_binary(node()), maps:get(origin, C)),
    ?assertEqual(list_to_binary(pid_to_list(P)), maps:get(pid, C)),
    ?assertEqual(integer_to_binary(T + erlang:time_offset(nanosecond)), maps:get(timestampNs, C)),
    ?assertEqual(26, byte_size(maps:get(eventId, C))),
    {[R], _} = map({trace_ts, P, return_from, {lists, reverse, 1}, [2, 1], T + 1}, S1),
    ?assertMatch(#{kind := 'KIND_RETURN', payload := <<"[2,1]">>, seq := <<"2">>}, R),
    ?assertNotEqual(maps:get(eventId, C), maps:get(eventId, R)).

exception_test() ->
    {[E], _} = map({trace_ts, self(), exception_from, {m, f, 2}, {error, badarg}, ts()}),
    ?assertMatch(#{kind := 'KIND_EXCEPTION', module := <<"m">>, arity := 2, reason := <<"{error,badarg}">>}, E).

send_receive_hash_test() ->
    To = spawn(fun() -> ok end),
    Msg = {hello, 1},
    {[S], _} = map({trace_ts, self(), send, Msg, To, ts()}),
    {[R], _} = map({trace_ts, To, 'receive', Msg, ts()}),
    ?assertEqual(list_to_binary(pid_to_list(To)), maps:get(peerPid, S)),
    ?assertEqual(maps:get(messageHash, S), maps:get(messageHash, R)),
    ?assertEqual(integer_to_binary(erlang:phash2(Msg, 1 bsl 32)), maps:get(messageHash, S)),
    ?assertNot(maps:is_key(peerPid, R)).

send_to_name_test_() ->
    Reg = spawn(fun() -> receive stop -> ok end end),
    true = register(scope_test_reg, Reg),
    Other = spawn(fun() -> receive stop -> ok end end),
    {_, S1} = map({trace_ts, Other, register, scope_test_reg2, ts()}),
    {[Ws], _} = map({trace_ts, self(), send, x, scope_test_reg, ts()}),
    {[Rt], _} = map({trace_ts, self(), send, x, scope_test_reg2, ts()}, S1),
    {[Un], _} = map({trace_ts, self(), send, x, no_such_name, ts()}),
    {[Rem], _} = map({trace_ts, self(), send, x, {n, 'b@h'}, ts()}),
    Reg ! stop, Other ! stop, unregister(scope_test_reg),
    [?_assertMatch(#{attributes := #{to_name := <<"scope_test_reg">>, to_resolved := <<"whereis">>}}, Ws),
     ?_assertEqual(list_to_binary(pid_to_list(Reg)), maps:get(peerPid, Ws)),
     ?_assertMatch(#{attributes := #{to_resolved := <<"register_trace">>}}, Rt),
     ?_assertEqual(list_to_binary(pid_to_list(Other)), maps:get(peerPid, Rt)),
     ?_assertMatch(#{attributes := #{to_resolved := <<"unresolved">>}}, Un),
     ?_assertNot(maps:is_key(peerPid, Un)),
     ?_assertMatch(#{peerOrigin := <<"b@h">>, attributes := #{to_resolved := <<"remote">>, to_node := <<"b@h">>}}, Rem),
     ?_assertNot(maps:is_key(peerPid, Rem))].

%% A pid of another node is printed as that node prints it, <0.X.Y>, so
%% the SEND names the process its RECEIVE (traced there) names.
remote_pid_test() ->
    Node = <<"b@h">>,
    Remote = binary_to_term(<<131, 88, 119, (byte_size(Node)), Node/binary, 77:32, 3:32, 1:32>>),
    ?assertEqual('b@h', node(Remote)),
    ?assertNotMatch("<0." ++ _, pid_to_list(Remote)),
    {[S], _} = map({trace_ts, self(), send, hi, Remote, ts()}),
    ?assertMatch(#{peerOrigin := <<"b@h">>, peerPid := <<"<0.77.3>">>}, S).

gen_call_alias_test() ->
    Caller = spawn(fun() -> ok end),
    Alias = make_ref(),
    Call = {'$gen_call', {Caller, [alias | Alias]}, get},
    {_, S1} = map({trace_ts, self(), 'receive', Call, ts()}),
    {[Reply], _} = map({trace_ts, self(), send, {[alias | Alias], 42}, Alias, ts()}, S1),
    ?assertEqual(list_to_binary(pid_to_list(Caller)), maps:get(peerPid, Reply)),
    ?assertMatch(#{attributes := #{to_resolved := <<"gen_call">>}}, Reply).

%% A gen_server callback's RETURN is preceded by a STATE_CHANGE.
init(_) -> {ok, 0}.
handle_call(add, _From, N) -> {reply, ok, N + 1}.
handle_cast(_, N) -> {noreply, N}.

state_change_test() ->
    P = self(),
    {_, S1} = map({trace_ts, P, call, {?MODULE, handle_call, [add, from, 1]}, ts()}),
    {[Sc, R], _} = map({trace_ts, P, return_from, {?MODULE, handle_call, 3}, {reply, ok, 2}, ts()}, S1),
    ?assertMatch(#{kind := 'KIND_STATE_CHANGE', payload := <<"2">>, seq := <<"2">>,
                   attributes := #{callback := <<"handle_call/3">>, changed := <<"true">>}}, Sc),
    ?assertMatch(#{kind := 'KIND_RETURN', seq := <<"3">>}, R).

spawn_exit_skip_test() ->
    Child = spawn(fun() -> ok end),
    {[Sp], _} = map({trace_ts, self(), spawn, Child, {m, f, [a]}, ts()}),
    ?assertMatch(#{kind := 'KIND_SPAWN', attributes := #{mfa := <<"m:f/1">>}}, Sp),
    {[X], S} = map({trace_ts, self(), exit, {shutdown, x}, ts()}),
    ?assertMatch(#{kind := 'KIND_EXIT', reason := <<"{shutdown,x}">>}, X),
    ?assertMatch({[], _}, map({trace_ts, self(), link, Child, ts()}, S)).

truncate_test() ->
    S = scope_tracer:new_map_state(#{payload_chars => 10}),
    {[C], _} = scope_tracer:map_trace({trace_ts, self(), call, {m, f, [lists:seq(1, 100)]}, ts()}, S),
    ?assertEqual(<<"[[1,2,3,4,...">>, maps:get(payload, C)),
    #{attributes := #{<<"payload_chars">> := Len}} = C,
    ?assert(binary_to_integer(Len) > 10).

event_json_test() ->
    {[C], _} = map({trace_ts, self(), call, {m, f, []}, ts()}),
    J = scope_json:decode(iolist_to_binary(scope_tracer:event_json(C))),
    ?assertMatch(#{<<"kind">> := <<"KIND_CALL">>, <<"arity">> := 0, <<"module">> := <<"m">>}, J),
    ?assert(is_binary(maps:get(<<"timestampNs">>, J))).

bad_options_test_() ->
    [?_assertMatch({error, {missing_option, endpoint, _}}, scope_tracer:start(#{})),
     ?_assertMatch({error, {bad_option, batch, 0}}, scope_tracer:start(#{endpoint => "http://h:1", batch => 0})),
     ?_assertMatch({error, {bad_option, endpoint, "ftp://x", _}}, scope_tracer:start(#{endpoint => "ftp://x"})),
     ?_assertMatch({error, {bad_option, match, x}}, scope_tracer:start(#{file => "/dev/null", match => x}))].

%% A process another tracer traces, or a name nobody has, is refused by
%% name; nothing stays traced.
taken_test() ->
    Other = spawn(fun() -> receive stop -> ok end end),
    W = spawn(fun() -> receive stop -> ok end end),
    erlang:trace(W, true, [send, {tracer, Other}]),
    ?assertEqual({error, {already_traced, W, Other}},
                 scope_tracer:start(#{file => "/dev/null", procs => [self(), W]})),
    ?assertEqual({flags, []}, erlang:trace_info(self(), flags)),
    ?assertEqual({error, {not_registered, no_such_name}},
                 scope_tracer:start(#{file => "/dev/null", procs => [no_such_name]})),
    ?assertEqual(undefined, whereis(scope_tracer)),
    erlang:trace(W, false, [all]),
    W ! stop, Other ! stop.

%% start_cluster/2 reports each node's outcome; an unreachable node is an
%% error for that node only.
start_cluster_unreachable_test() ->
    ?assertMatch([{'scope_nosuch@nohost', {error, {load, 'scope_nosuch@nohost', _, _}}}],
                 scope_tracer:start_cluster(['scope_nosuch@nohost'], #{file => "/dev/null"})),
    ?assertEqual([{'scope_nosuch@nohost', {error, {badrpc, nodedown}}}],
                 scope_tracer:stop_cluster(['scope_nosuch@nohost'])).

%% deep/2 recurses N frames and raises at the bottom.
deep(0, How) -> erlang:How(bottom);
deep(N, How) -> 1 + deep(N - 1, How).

%% The offline mode traces a process tree into a file: a call chain that
%% raises through every frame gives one EXCEPTION per frame, and the
%% tracer's own processes never appear.
file_mode_test_() -> {timeout, 60, fun file_mode/0}.
file_mode() ->
    File = filename:join("/tmp", "scope_tracer_file_" ++ integer_to_list(erlang:unique_integer([positive])) ++ ".jsonl"),
    Self = self(),
    W = spawn(fun() -> receive go -> ok end, catch deep(3, error), Self ! done end),
    {ok, Tracer} = scope_tracer:start(#{file => File, procs => [W], modules => [?MODULE]}),
    W ! go,
    receive done -> ok end,
    {ok, Stats} = scope_tracer:stop(),
    {ok, Bin} = file:read_file(File),
    ok = file:delete(File),
    Evs = [scope_json:decode(L) || L <- binary:split(Bin, <<"\n">>, [global, trim_all])],
    ?assertEqual(maps:get(written, Stats), length(Evs)),
    ?assertEqual(maps:get(traced, Stats), length(Evs)),
    Kinds = [maps:get(<<"kind">>, E) || E <- Evs],
    ?assertEqual(4, length([K || K <- Kinds, K =:= <<"KIND_CALL">>])),
    ?assertEqual(4, length([K || K <- Kinds, K =:= <<"KIND_EXCEPTION">>])),
    Pids = lists:usort([maps:get(<<"pid">>, E) || E <- Evs]),
    ?assertEqual([list_to_binary(pid_to_list(W))], Pids -- [list_to_binary(pid_to_list(Self))]),
    ?assertNot(lists:member(list_to_binary(pid_to_list(Tracer)), Pids)),
    ?assertEqual(stop, maps:get(stopped_reason, Stats)).

%% Past max_rate trace messages per second tracing stops by itself: the
%% traced process's flags are cleared and what it does next is not traced.
max_rate_test_() -> {timeout, 60, fun max_rate/0}.
max_rate() ->
    File = "/tmp/scope_tracer_rate_" ++ integer_to_list(erlang:unique_integer([positive])),
    Self = self(),
    Burst = fun(K) -> [self() ! {n, I} || I <- lists:seq(1, K)], [receive {n, _} -> ok end || _ <- lists:seq(1, K)] end,
    W = spawn(fun() ->
                      receive go1 -> ok end, Burst(300), Self ! burst1,
                      receive go2 -> ok end, Burst(1000), Self ! done
              end),
    {ok, _} = scope_tracer:start(#{file => File, procs => [W], max_rate => 100}),
    W ! go1,
    receive burst1 -> ok end,
    wait(fun() -> maps:get(stopped_reason, scope_tracer:stats()) =:= max_rate end, 500),
    ?assertEqual({flags, []}, erlang:trace_info(W, flags)),
    W ! go2,
    receive done -> ok end,
    {ok, Stats} = scope_tracer:stop(),
    ok = file:delete(File),
    ?assertEqual(max_rate, maps:get(stopped_reason, Stats)),
    ?assert(maps:get(traced, Stats) =< 2 * 300 + 2).

%% A tracer's mailbox deeper than max_mailbox stops tracing (overload).
overload_test_() -> {timeout, 60, fun overload/0}.
overload() ->
    File = "/tmp/scope_tracer_over_" ++ integer_to_list(erlang:unique_integer([positive])),
    Self = self(),
    W = spawn(fun() -> receive go -> ok end,
                       [self() ! {n, I} || I <- lists:seq(1, 20000)], Self ! done end),
    {ok, Tracer} = scope_tracer:start(#{file => File, procs => [W], max_mailbox => 100, max_rate => infinity}),
    erlang:suspend_process(Tracer),
    W ! go,
    receive done -> ok end,
    erlang:resume_process(Tracer),
    {ok, Stats} = scope_tracer:stop(),
    ok = file:delete(File),
    ?assertEqual(overload, maps:get(stopped_reason, Stats)).

wait(_F, 0) -> error(timeout);
wait(F, N) ->
    case F() of
        true -> ok;
        false -> timer:sleep(10), wait(F, N - 1)
    end.
