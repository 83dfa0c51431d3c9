%% The live mode against a small HTTP server in the test: batching,
%% retries with the same ids, failover across endpoints, refusal, chunked
%% answers, drop-oldest while the server is away, and the stats invariant
%% traced = acked + dropped + refused + queued.
-module(scope_sender_tests).
-include_lib("eunit/include/eunit.hrl").
-include_lib("public_key/include/public_key.hrl").

%% server/1 starts a server whose answer to the Nth request is Script(N):
%% {Status, Body} (Content-Length), {chunked, Status, Body}, or close (drop
%% the connection without answering). Every request body is sent to the
%% test process as {req, N, Body}.
server(Script) ->
    {ok, L} = gen_tcp:listen(0, [binary, {active, false}, {reuseaddr, true}, {ip, {127, 0, 0, 1}}]),
    {ok, Port} = inet:port(L),
    Test = self(),
    Counter = counters:new(1, []),
    Acc = spawn_link(fun() -> accept(L, Script, Test, Counter) end),
    ok = gen_tcp:controlling_process(L, Acc),
    {"http://127.0.0.1:" ++ integer_to_list(Port), Acc}.

accept(L, Script, Test, C) ->
    case gen_tcp:accept(L) of
        {ok, S} ->
            P = spawn(fun() -> receive go -> serve(S, <<>>, Script, Test, C) end end),
            ok = gen_tcp:controlling_process(S, P),
            P ! go,
            accept(L, Script, Test, C);
        {error, closed} -> ok
    end.

serve(S, Buf, Script, Test, C) ->
    case read_request(S, Buf) of
        {ok, Body, Rest} ->
            counters:add(C, 1, 1),
            N = counters:get(C, 1),
            Test ! {req, N, Body},
            case Script(N) of
                close -> gen_tcp:close(S);
                {chunked, Status, RB} ->
                    {A, B} = split_binary(RB, byte_size(RB) div 2),
                    Chunk = fun(X) -> [integer_to_list(byte_size(X), 16), "\r\n", X, "\r\n"] end,
                    ok = gen_tcp:send(S, [status(Status), "Transfer-Encoding: chunked\r\n\r\n",
                                          Chunk(A), Chunk(B), "0\r\n\r\n"]),
                    serve(S, Rest, Script, Test, C);
                {Status, RB} ->
                    ok = gen_tcp:send(S, [status(Status), "Content-Length: ", integer_to_list(byte_size(RB)),
                                          "\r\n\r\n", RB]),
                    serve(S, Rest, Script, Test, C)
            end;
        closed -> ok
    end.

status(N) -> ["HTTP/1.1 ", integer_to_list(N), " X\r\nContent-Type: application/json\r\n"].

read_request(S, Buf) ->
    case binary:split(Buf, <<"\r\n\r\n">>) of
        [Head, Rest] ->
            {match, [Len]} = re:run(Head, "Content-Length: (\\d+)", [{capture, all_but_first, binary}]),
            body(S, Rest, binary_to_integer(Len));
        [_] ->
            case gen_tcp:recv(S, 0) of
                {ok, More} -> read_request(S, <<Buf/binary, More/binary>>);
                {error, _} -> closed
            end
    end.

body(_S, Buf, Len) when byte_size(Buf) >= Len ->
    <<B:Len/binary, R/binary>> = Buf,
    {ok, B, R};
body(S, Buf, Len) ->
    case gen_tcp:recv(S, 0) of
        {ok, More} -> body(S, <<Buf/binary, More/binary>>, Len);
        {error, _} -> closed
    end.

ids(Body) ->
    #{<<"events">> := Evs} = scope_json:decode(Body),
    [maps:get(<<"eventId">>, E) || E <- Evs].

%% worker/1: a process that sends itself N messages when told to.
worker(N) ->
    Self = self(),
    spawn(fun() -> receive go -> ok end, [self() ! {m, I} || I <- lists:seq(1, N)],
                   [receive {m, I} -> ok end || I <- lists:seq(1, N)], Self ! done end).

run(Opts, N) ->
    _ = reqs(),  % left by an earlier test's server
    W = worker(N),
    {ok, _} = scope_tracer:start(Opts#{procs => [W]}),
    W ! go,
    receive done -> ok end,
    {ok, Stats} = scope_tracer:stop(),
    Stats.

reqs() -> receive {req, N, B} -> [{N, B} | reqs()] after 0 -> [] end.

invariant(#{traced := T, acked := A, dropped := D, refused := R, queued := Q}) ->
    ?assertEqual(T, A + D + R + Q).

%% The worker's events: receive go, N sends, N receives, send done, exit
%% (2N + 3). Here 203 in batches of 50, answered
%% with chunked bodies; every event acknowledged once.
batches_test_() -> {timeout, 60, fun batches/0}.
batches() ->
    {Url, _} = server(fun(_) -> {chunked, 200, <<"{\"accepted\":50,\"eventIds\":[]}">>} end),
    Stats = run(#{endpoint => Url, batch => 50}, 100),
    invariant(Stats),
    ?assertMatch(#{traced := 203, acked := 203, queued := 0, dropped := 0, retried := 0}, Stats),
    Ids = lists:append([ids(B) || {_, B} <- reqs()]),
    ?assertEqual(203, length(Ids)),
    ?assertEqual(203, length(lists:usort(Ids))).

%% The first endpoint refuses connections and the second fails twice:
%% the batch is resent with the same ids until acknowledged.
failover_and_retry_test_() -> {timeout, 60, fun failover_and_retry/0}.
failover_and_retry() ->
    {ok, L} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, DeadPort} = inet:port(L),
    ok = gen_tcp:close(L),
    Dead = "http://127.0.0.1:" ++ integer_to_list(DeadPort),
    {Url, _} = server(fun(1) -> {503, <<"{\"code\":\"unavailable\",\"message\":\"no leader\"}">>};
                         (2) -> close;
                         (_) -> {200, <<"{}">>}
                      end),
    Stats = run(#{endpoint => [Dead, Url], batch => 500, backoff_ms => 5, max_backoff_ms => 20}, 10),
    invariant(Stats),
    ?assertMatch(#{traced := 23, acked := 23, sent := 23, queued := 0}, Stats),
    ?assert(maps:get(retried, Stats) >= 3 * 23),
    [{_, B1} | Rest] = lists:keysort(1, reqs()),
    ?assertEqual(3, length(Rest) + 1),
    [?assertEqual(ids(B1), ids(B)) || {_, B} <- Rest].

refused_test_() -> {timeout, 60, fun refused/0}.
refused() ->
    {Url, _} = server(fun(_) -> {400, <<"{\"code\":\"invalid_argument\",\"message\":\"events[0].kind\"}">>} end),
    Stats = run(#{endpoint => Url}, 3),
    invariant(Stats),
    ?assertMatch(#{traced := 9, refused := 9, acked := 0, queued := 0}, Stats),
    ?assertEqual({http, 400, <<"invalid_argument">>, <<"events[0].kind">>}, maps:get(last_error, Stats)).

%% No server: the queue keeps the newest max_queue events, the rest are
%% dropped; stop/0 gives up after stop_timeout and reports them queued.
away_test_() -> {timeout, 60, fun away/0}.
away() ->
    {ok, L} = gen_tcp:listen(0, [{ip, {127, 0, 0, 1}}]),
    {ok, DeadPort} = inet:port(L),
    ok = gen_tcp:close(L),
    Stats = run(#{endpoint => "http://127.0.0.1:" ++ integer_to_list(DeadPort), max_queue => 20,
                  batch => 10, stop_timeout => 200, backoff_ms => 5}, 100),
    invariant(Stats),
    #{traced := 203, acked := 0, dropped := D, queued := Q} = Stats,
    ?assert(Q =< 30),
    ?assertEqual(203, D + Q).

%% procs => all traces every process but the tracer and its sender: none
%% of their events reach the server.
never_traces_itself_test_() -> {timeout, 60, fun never_traces_itself/0}.
never_traces_itself() ->
    _ = reqs(),
    {Url, _} = server(fun(_) -> {200, <<"{}">>} end),
    {ok, Tracer} = scope_tracer:start(#{endpoint => Url, procs => all, batch => 10, flush_ms => 5}),
    {links, [Sender]} = process_info(Tracer, links),
    Self = self(),
    W = spawn(fun() -> [self() ! {m, I} || I <- lists:seq(1, 50)], Self ! done end),
    receive done -> ok end,
    {ok, Stats} = scope_tracer:stop(),
    invariant(Stats),
    Pids = [list_to_binary(pid_to_list(P)) || P <- [Tracer, Sender]],
    Evs = lists:append([maps:get(<<"events">>, scope_json:decode(B)) || {_, B} <- reqs()]),
    ?assertEqual(maps:get(acked, Stats), length(Evs)),
    ?assert(lists:any(fun(E) -> maps:get(<<"pid">>, E) =:= list_to_binary(pid_to_list(W)) end, Evs)),
    [?assertNot(lists:member(maps:get(<<"pid">>, E), Pids)) || E <- Evs],
    ?assertEqual([], [P || P <- erlang:processes(), erlang:trace_info(P, tracer) =:= {tracer, Tracer}]).

%% https with cacertfile: the peer and its host name are verified; the
%% processes ssl starts for the connection are never traced (procs => new
%% would trace them) and none of their events is sent.
https_test_() -> {timeout, 60, fun https/0}.
https() ->
    _ = reqs(),
    {ok, _} = application:ensure_all_started(ssl),
    SAN = #'Extension'{extnID = ?'id-ce-subjectAltName', extnValue = [{dNSName, "localhost"}], critical = false},
    Key = [{digest, sha256}, {key, {namedCurve, secp256r1}}],
    #{server_config := SC, client_config := CC} =
        public_key:pkix_test_data(#{server_chain => #{root => Key, intermediates => [], peer => [{extensions, [SAN]} | Key]},
                                    client_chain => #{root => Key, intermediates => [], peer => Key}}),
    CaFile = "/tmp/scope_sender_ca_" ++ integer_to_list(erlang:unique_integer([positive])) ++ ".pem",
    ok = file:write_file(CaFile, public_key:pem_encode([{'Certificate', C, not_encrypted}
                                                        || C <- proplists:get_value(cacerts, CC)])),
    {ok, L} = ssl:listen(0, [binary, {active, false}, {reuseaddr, true}, {ip, {127, 0, 0, 1}} | SC]),
    {ok, {_, Port}} = ssl:sockname(L),
    Test = self(),
    spawn_link(fun() -> tls_accept(L, Test) end),
    Self = self(),
    {ok, Tracer} = scope_tracer:start(#{endpoint => "https://localhost:" ++ integer_to_list(Port),
                                        cacertfile => CaFile, procs => new, batch => 5, flush_ms => 5}),
    W = spawn(fun() -> receive go -> ok end, [self() ! {m, I} || I <- lists:seq(1, 20)], Self ! done end),
    W ! go,
    receive done -> ok end,
    {ok, Stats} = scope_tracer:stop(),
    ok = file:delete(CaFile),
    invariant(Stats),
    ?assertMatch(#{acked := N, queued := 0, refused := 0} when N > 0, Stats),
    Evs = lists:append([maps:get(<<"events">>, scope_json:decode(B)) || {_, B} <- reqs()]),
    ?assertEqual(maps:get(acked, Stats), length(Evs)),
    %% Besides W, the only processes spawned while tracing are ssl's
    %% connection processes: none of their events may be sent.
    Pids = lists:usort([maps:get(<<"pid">>, E) || E <- Evs]),
    ?assertEqual([list_to_binary(pid_to_list(W))], Pids),
    ?assertEqual([], [P || P <- erlang:processes(), erlang:trace_info(P, tracer) =:= {tracer, Tracer}]),
    ssl:close(L).

tls_accept(L, Test) ->
    {ok, T} = ssl:transport_accept(L),
    {ok, S} = ssl:handshake(T),
    tls_serve(S, <<>>, Test, 0).

tls_serve(S, Buf, Test, N) ->
    case binary:split(Buf, <<"\r\n\r\n">>) of
        [Head, Rest] ->
            {match, [Len0]} = re:run(Head, "Content-Length: (\\d+)", [{capture, all_but_first, binary}]),
            Len = binary_to_integer(Len0),
            case Rest of
                <<Body:Len/binary, More/binary>> ->
                    Test ! {req, N + 1, Body},
                    ok = ssl:send(S, ["HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"]),
                    tls_serve(S, More, Test, N + 1);
                _ -> tls_more(S, Buf, Test, N)
            end;
        [_] -> tls_more(S, Buf, Test, N)
    end.

tls_more(S, Buf, Test, N) ->
    case ssl:recv(S, 0) of
        {ok, More} -> tls_serve(S, <<Buf/binary, More/binary>>, Test, N);
        {error, _} -> ok
    end.

backoff_test() ->
    [?assert(B >= 1 andalso B =< min(1000, 10 bsl (F - 1))) || F <- lists:seq(1, 30),
                                                               B <- [scope_sender:backoff(F, 10, 1000)]].

classify_test_() ->
    [?_assertEqual(refuse, scope_sender:classify(400, <<"{\"code\":\"invalid_argument\"}">>)),
     ?_assertEqual(retry, scope_sender:classify(503, <<"{\"code\":\"unavailable\"}">>)),
     ?_assertEqual(retry, scope_sender:classify(429, <<"{\"code\":\"resource_exhausted\"}">>)),
     ?_assertEqual(retry, scope_sender:classify(502, <<"<html>bad gateway</html>">>))].
